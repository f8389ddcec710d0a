"""The ``hdmnet`` command: one subcommand per pipeline stage, each a thin shell over the package.

Heavy imports (torch, mlflow) happen inside the commands so that ``--help`` stays instant.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from hdmnet import __version__
from hdmnet.config import BACKBONES, DATASETS, Params, resolve_params
from hdmnet.errors import HdmnetError, StageError
from hdmnet.layout import BaseRun, Run

log = logging.getLogger("hdmnet")


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--params",
        type=Path,
        action="append",
        default=[],
        metavar="FILE",
        help="parameter file merged over params.yaml (repeatable, in order; the full "
        "reproduction: presets/paper.yaml)",
    )
    parser.add_argument(
        "-s",
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override one parameter after the files, e.g. -s meta.pascal.epochs=6 (repeatable; "
        "values are YAML: -s 'grid.folds=[0,1]')",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")


def _grid_args(parser: argparse.ArgumentParser, shot: bool, variant: bool) -> None:
    parser.add_argument("--dataset", choices=DATASETS, required=True)
    parser.add_argument("--backbone", choices=BACKBONES, required=True)
    parser.add_argument("--fold", type=int, choices=range(4), required=True, metavar="{0..3}")
    if shot:
        parser.add_argument("--shot", type=int, required=True)
    if variant:
        parser.add_argument("--variant", default="full", help="ablation variant (default: full)")
    parser.add_argument(
        "--seed",
        type=int,
        help="training seed (default: the first of grid.train_seeds)",
    )


def _nproc_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--nproc",
        type=int,
        help="processes (torchrun, DDP: NCCL on GPUs, gloo on CPU); default: train.gpus or 1",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="hdmnet",
        description=(
            "HDMNet few-shot segmentation, reproduced: data, training, evaluation and reports. "
            "The stages run in this order: synth (embedded data only), download, prepare, "
            "train-base, train, evaluate, aggregate, report. `hdmnet demo` runs them all."
        ),
    )
    parser.add_argument("--version", action="version", version=f"hdmnet {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add(name: str, help_text: str) -> argparse.ArgumentParser:
        cmd = sub.add_parser(name, help=help_text, description=help_text)
        _common(cmd)
        return cmd

    cmd = add("config", "print the resolved parameters (defaults filled, overrides applied)")
    cmd.add_argument("--variant", default="full", help="show an ablation variant's parameters")

    cmd = add("synth", "generate the embedded data sets as archives in the real layout")
    cmd.add_argument("--out", type=Path, help="output folder (default: <data>/synth)")

    cmd = add("download", "fetch, verify and extract the archives of the selected preset")
    cmd.add_argument(
        "--dataset",
        action="append",
        choices=DATASETS,
        help="data set whose archives to fetch (repeatable; default: grid.datasets)",
    )

    cmd = add("prepare", "convert masks, build full lists, class-pixel counts and fold lists")
    cmd.add_argument("dataset", choices=DATASETS)

    cmd = add("train-base", "train the PSPNet base learner of one dataset, backbone and fold")
    _grid_args(cmd, shot=False, variant=False)
    _nproc_arg(cmd)

    cmd = add("train", "meta-train HDMNet for one dataset, backbone, fold, shot and variant")
    _grid_args(cmd, shot=True, variant=True)
    _nproc_arg(cmd)

    cmd = add("evaluate", "run the episodic test protocol and write a metrics record")
    _grid_args(cmd, shot=True, variant=True)
    cmd.add_argument(
        "--checkpoint",
        type=Path,
        help="evaluate a checkpoint made elsewhere (official HDMNet, another run) into its own "
        "record, results/external/NAME/...; the pipeline's records are never touched",
    )
    cmd.add_argument(
        "--name", help="with --checkpoint: what its record and table rows are called, e.g. official"
    )

    cmd = add(
        "import-base",
        "install a base learner made elsewhere (BAM's PSPNet, ours) for one dataset, backbone "
        "and fold, with its record, so the workflow uses it instead of training one",
    )
    cmd.add_argument("checkpoint", type=Path, help="the PSPNet checkpoint file")
    _grid_args(cmd, shot=False, variant=False)

    add("aggregate", "render the paper-style tables from the metrics records")
    add("report", "write figures and the self-contained HTML ablation report")
    cmd = add(
        "predict",
        "segment query images from K annotated support images with a trained checkpoint (ours "
        "or official): a 0/255 mask PNG at each query's size and an overlay, on CPU or GPU",
    )
    cmd.add_argument(
        "checkpoint", type=Path, help="a trained HDMNet (best.pth, last.pth, official)"
    )
    cmd.add_argument(
        "--support", type=Path, nargs="+", required=True, metavar="IMAGE", help="K support images"
    )
    notes = cmd.add_mutually_exclusive_group(required=True)
    notes.add_argument(
        "--support-masks",
        type=Path,
        nargs="+",
        metavar="MASK",
        help="one mask PNG per support image, same size: non-zero pixels are the object "
        "(with --class-id: pixels of that class, 255 ignored)",
    )
    notes.add_argument(
        "--support-boxes",
        nargs="+",
        metavar="BOX",
        help="one box per support image, left,top,right,bottom in pixels (right/bottom "
        "excluded); several boxes of one image separated by ';'",
    )
    cmd.add_argument(
        "--query", type=Path, nargs="+", required=True, metavar="PATH", help="images or folders"
    )
    cmd.add_argument("--out", type=Path, required=True, help="folder for the masks and overlays")
    cmd.add_argument("--class-id", type=int, help="the class of class-index support masks")
    cmd.add_argument("--device", default="auto", help="auto (GPU if any), cpu, cuda or cuda:N")
    cmd.add_argument("--batch-size", type=int, default=8, help="queries decoded together")
    cmd.add_argument(
        "--image-size", type=int, help="model input side (default: the checkpoint's, or params')"
    )
    add(
        "check",
        "before long work: ImageNet weights, disk space, GPUs, archives or mirror and writable "
        "folders for these parameters, one line per problem with what to do (exit 1 on any)",
    )
    cmd = add("demo", "the main job: the whole default pipeline, ending in tables and report")
    cmd.add_argument("--cores", type=int, default=2, help="parallel jobs (default: 2)")
    cmd.add_argument(
        "--profile",
        default="workflow/profiles/default",
        help="Snakemake profile (default: workflow/profiles/default; a cluster: "
        "workflow/profiles/slurm)",
    )
    return parser


def _cmd_config(args: argparse.Namespace) -> int:
    import yaml

    params = resolve_params(args.params, args.overrides).for_variant(args.variant)
    sys.stdout.write(yaml.safe_dump(params.to_dict(), sort_keys=False))
    return 0


def _cmd_synth(args: argparse.Namespace) -> int:
    from hdmnet import layout
    from hdmnet.data.synth import generate, synth_config

    params = resolve_params(args.params, args.overrides)
    out = args.out or layout.synth_dir(params)
    generate(out, synth_config(params.synth), workers=params.data.workers)
    print(f"Embedded data sets written to {out} (manifest: {out / 'manifest.json'})")
    return 0


def _cmd_download(args: argparse.Namespace) -> int:
    from hdmnet.data import stages

    params = resolve_params(args.params, args.overrides)
    for dataset in args.dataset or params.grid.datasets:
        marker = stages.download(params, dataset)
        print(f"{dataset}: archives verified and extracted ({marker})")
    return 0


def _cmd_prepare(args: argparse.Namespace) -> int:
    from hdmnet.data import stages

    params = resolve_params(args.params, args.overrides)
    marker = stages.prepare(params, args.dataset)
    print(f"{args.dataset}: prepared ({marker})")
    return 0


def _seed_of(args: argparse.Namespace, params: Params) -> int:
    return params.grid.train_seeds[0] if args.seed is None else args.seed


def _base_of(args: argparse.Namespace, params: Params) -> BaseRun:
    return BaseRun(args.dataset, args.backbone, args.fold, _seed_of(args, params))


def _run_of(args: argparse.Namespace, params: Params) -> Run:
    seed = _seed_of(args, params)
    return Run(args.dataset, args.backbone, args.variant, args.fold, args.shot, seed)


def _launch(args: argparse.Namespace, job: Callable[[Params], object]) -> int:
    """Run a training job on its devices: in this process, or in ``nproc`` torchrun workers."""
    from hdmnet import launch

    params = resolve_params(args.params, args.overrides)
    nproc = args.nproc or max(1, params.train.gpus)
    if launch.under_torchrun():
        job(params)
        return 0
    with launch.claim_gpus(params.train.gpus):
        if nproc > 1:
            return launch.torchrun(nproc, args.argv)
        job(params)
    return 0


def _cmd_train_base(args: argparse.Namespace) -> int:
    from hdmnet.train.base import train_base

    return _launch(args, lambda p: train_base(p, _base_of(args, p)))


def _cmd_train(args: argparse.Namespace) -> int:
    from hdmnet.train.meta import train_meta

    return _launch(args, lambda p: train_meta(p, _run_of(args, p)))


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from hdmnet import launch
    from hdmnet.evaluate.evaluator import External, evaluate

    if (args.checkpoint is None) != (args.name is None):
        raise StageError(
            "--checkpoint and --name go together: --name says what the external checkpoint's "
            "record and table rows are called (e.g. --name official)"
        )
    external = External(args.name, args.checkpoint) if args.checkpoint else None
    params = resolve_params(args.params, args.overrides)
    run = _run_of(args, params)
    if external is not None:
        if args.seed is not None:
            raise StageError("--seed names a training of this pipeline; not with --checkpoint")
        run = dataclasses.replace(run, seed=None)
    with launch.claim_gpus(min(1, params.train.gpus)):
        record = evaluate(params, run, external)
    label = run.name + (f" (external: {args.name})" if external else "")
    print(
        f"{label}: mIoU {record['miou']:.2f} "
        f"(meta {record['outputs']['meta']['miou']:.2f}), FB-IoU {record['fbiou']:.2f}"
    )
    return 0


def _cmd_import_base(args: argparse.Namespace) -> int:
    from hdmnet.train.base import import_base_learner

    params = resolve_params(args.params, args.overrides)
    record = import_base_learner(params, _base_of(args, params), args.checkpoint)
    print(
        f"{args.checkpoint} installed as {record['checkpoints']['best']['path']} "
        f"(with its record): the workflow uses it instead of training a base learner"
    )
    return 0


def _cmd_aggregate(args: argparse.Namespace) -> int:
    from hdmnet.report.build import aggregate, render_main_markdown

    params = resolve_params(args.params, args.overrides)
    written = aggregate(params)
    print(render_main_markdown(params))
    print(f"Tables written: {', '.join(str(p) for p in written)}")
    return 0


def _cmd_report(args: argparse.Namespace) -> int:
    from hdmnet.evaluate.examples import episode_views
    from hdmnet.report.build import build_report

    params = resolve_params(args.params, args.overrides)
    path = build_report(params, lambda run, n: episode_views(params, run, n))
    print(f"Report: {path.resolve()}")
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from hdmnet import layout
    from hdmnet.pipeline import run_workflow

    params = resolve_params(args.params, args.overrides)  # validated before Snakemake starts
    code = run_workflow(args.params, args.overrides, args.cores, args.profile)
    if code != 0:
        print(f"hdmnet demo: the workflow failed (exit {code}); see logs/", file=sys.stderr)
        return code
    table = layout.tables_dir(params) / "main.md"
    if table.exists():
        print(table.read_text())
    print(f"Report: {layout.report_file(params).resolve()}")
    print(f"Tables: {layout.tables_dir(params).resolve()}  MLflow: {params.tracking.uri}")
    return 0


def _cmd_predict(args: argparse.Namespace) -> int:
    from hdmnet.evaluate.predict import load_predictor, load_supports, query_files, run_predict

    # Our checkpoints carry their settings: parameters are needed only for an official file.
    given = args.params or args.overrides or Path("params.yaml").exists()
    params = resolve_params(args.params, args.overrides) if given else None
    queries = query_files(args.query)
    supports = load_supports(args.support, args.support_masks, args.support_boxes, args.class_id)
    predictor = load_predictor(
        args.checkpoint,
        params,
        device=args.device,
        batch_size=args.batch_size,
        image_size=args.image_size,
    )
    written = run_predict(predictor, supports, queries, args.out)
    for entry in written:
        print(f"{entry['query']} -> {entry['mask']} (foreground {100 * entry['foreground']:.1f}%)")
    seconds = written[0]["seconds_per_query"] if written else 0.0
    print(
        f"{len(written)} queries: masks and overlays in {args.out} "
        f"({seconds:.2f} s per query on {predictor.device})"
    )
    return 0


def _cmd_check(args: argparse.Namespace) -> int:
    from hdmnet.preflight import ERROR, OK, run_checks

    params = resolve_params(args.params, args.overrides)
    findings = run_checks(params)
    for finding in findings:
        print(finding, file=sys.stdout if finding.level == OK else sys.stderr)
    errors = [f for f in findings if f.level == ERROR]
    if errors:
        print(f"hdmnet check: {len(errors)} problem(s) to fix first", file=sys.stderr)
        return 1
    print(f"hdmnet check: ready ({len(findings)} checks, no problem)")
    return 0


COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {
    "config": _cmd_config,
    "synth": _cmd_synth,
    "demo": _cmd_demo,
    "download": _cmd_download,
    "prepare": _cmd_prepare,
    "train-base": _cmd_train_base,
    "train": _cmd_train,
    "evaluate": _cmd_evaluate,
    "import-base": _cmd_import_base,
    "aggregate": _cmd_aggregate,
    "report": _cmd_report,
    "predict": _cmd_predict,
    "check": _cmd_check,
}


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    args.argv = argv
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    handler = COMMANDS[args.command]
    try:
        return handler(args)
    except HdmnetError as error:
        # Problems the user can fix (bad input, missing files, checksum errors) get one clear
        # line; --verbose shows the traceback. Anything else is a bug and keeps its traceback.
        if args.verbose:
            raise
        print(f"hdmnet {args.command}: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
