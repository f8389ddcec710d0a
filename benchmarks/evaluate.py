"""Benchmark: the evaluation protocol planned (ours) against the straightforward order.

    python benchmarks/evaluate.py                                     # demo preset (small)
    python benchmarks/evaluate.py --scale 17 --fold 2 --backbone resnet50 --size 473 \\
        --episodes 1000 --cache-mb 4096 --stub-decode                 # the paper protocol

Data: the embedded PASCAL data set generated at ``--scale`` (``synth.scale``; with the
generator's current counts 5 gives a fold-0 test list of 134 items, 17 gives 213 / 224 / 569 /
234 on folds 0-3, the real ones have a few hundred each; generating at 17 takes about 10 minutes)
and prepared in a temp folder, or ``--data`` (a prepared ``paths.data``). Model:
``--checkpoint``; else, for the small backbone, a base and a meta learner trained quickly (1 epoch
each, small crops); else random weights (ResNet-50: the passes and the time do not depend on the
weights).

In one process (``--threads``, default 2):

1. straightforward (``cache_mb=0``: every episode encodes its images afresh) on the first
   ``--straight-episodes`` episodes of the first seed: its time per 1000 episodes is
   EXTRAPOLATED from those (said so in the output);
2. planned: ``--seeds`` x ``--episodes`` episodes as ``hdmnet evaluate`` runs them
   (``eval.cache_mb`` = ``--cache-mb``, batches of 16): wall time, time per 1000 episodes,
   backbone passes per episode, peak bytes kept, prior-map reuse, encode/decode seconds. With
   ``--stub-decode`` (ResNet-50 on a shared 2-core machine: 10,000 decodings take hours) the
   encoding runs in full and for real (passes, bytes kept, encode time are measured) while the
   decoding is a stub; the decode time is then EXTRAPOLATED from the episodes of step 1;
3. identity: planned and straightforward on ``--check-seeds`` x ``--check-episodes`` episodes:
   the integer counts of every meter must be identical (exit status 1 otherwise);
4. one episode at a time (straightforward, batch 1) on the same episodes: mIoU within 0.05
   (exit status 1 otherwise).

Figures measured with it are in README.md ("Tests and benchmarks").
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
import yaml

from hdmnet import layout
from hdmnet.config import Params, from_mapping, load_params
from hdmnet.evaluate.protocol import OUTPUTS, EpisodeRunner, ProtocolResult
from hdmnet.layout import Run
from hdmnet.model import HDMNet, HDMNetOutput, build_hdmnet, load_checkpoint
from hdmnet.model.pspnet import num_base_classes

ROOT = Path(__file__).resolve().parents[1]
QUICK_TRAINING = [
    "base.pascal.epochs=1",
    "base.pascal.crop=65",
    "base.pascal.val_size=65",
    "meta.pascal.epochs=1",
    "meta.pascal.image_size=97",
    "meta.pascal.val_episodes=20",
]


# -- data and model ---------------------------------------------------------------------------


def prepare_data(params: Params) -> None:
    from hdmnet.data import stages
    from hdmnet.data.synth import generate, synth_config

    print(
        f"generating (synth.scale {params.synth.scale}) and preparing the embedded PASCAL data "
        f"in {layout.data_dir(params)} ...",
        flush=True,
    )
    generate(layout.synth_dir(params), synth_config(params.synth))
    stages.download(params, "pascal")
    stages.prepare(params, "pascal")


def quick_checkpoint(params: Params, work: Path, fold: int, shot: int) -> Path:
    """Train a base and a meta learner quickly through the CLI; the meta checkpoint's path."""
    from hdmnet.cli import main

    quick = params.with_overrides([*QUICK_TRAINING, f"paths.results={work / 'quick'}"])
    params_file = work / "quick-params.yaml"
    params_file.write_text(yaml.safe_dump(quick.to_dict(), sort_keys=False))
    grid = ["--params", str(params_file), "--dataset", "pascal", "--backbone", "small"]
    grid += ["--fold", str(fold)]
    print("training a quick base and meta learner (1 epoch each) ...", flush=True)
    if main(["train-base", *grid]) != 0 or main(["train", *grid, "--shot", str(shot)]) != 0:
        raise SystemExit("quick training failed")
    for path in sorted((work / "quick").rglob("best.pth")):
        if load_checkpoint(path)["meta"].get("kind") == "hdmnet":
            return path
    raise SystemExit(f"no meta-learner checkpoint under {work / 'quick'}")


def model_from_checkpoint(path: Path, params: Params) -> HDMNet:
    """HDMNet for a checkpoint, built as ``hdmnet evaluate`` builds it (``HDMNet.from_config``):
    from the parameters the checkpoint was trained with (ours), or ``params`` (official files,
    which carry none); the cell (dataset, backbone, fold, shot) from its metadata."""
    meta = load_checkpoint(path)["meta"]
    if meta.get("config"):
        params = from_mapping(meta["config"], source=f"{path} (meta.config)")
    run = Run(
        meta.get("dataset", "pascal"),
        meta.get("backbone", "resnet50"),
        "full",  # a checkpoint's config is already resolved for its variant
        int(meta.get("fold", 0)),
        int(meta["shot"]),
        None,
    )
    model = HDMNet.from_config(params, run)
    load_checkpoint(path, model)
    return model.eval()


def random_model(params: Params, backbone: str, fold: int, shot: int) -> HDMNet:
    """The paper's model (build_hdmnet's defaults) with random weights."""
    torch.manual_seed(0)
    model = build_hdmnet(backbone, num_base_classes(params, "pascal", fold), shot)
    with torch.no_grad():  # non-trivial ensemble weights, as in benchmarks/forward.py
        model.gram_merge.weight.copy_(torch.tensor([1.0, 0.3]).view(1, 2, 1, 1))
        model.cls_merge.weight.copy_(torch.tensor([1.0, 0.5]).view(1, 2, 1, 1))
    return model.eval()


def load_model(args: argparse.Namespace, params: Params, work: Path) -> tuple[HDMNet, str]:
    if args.checkpoint:
        return model_from_checkpoint(args.checkpoint, params), str(args.checkpoint)
    if args.backbone == "small":
        path = quick_checkpoint(params, work, args.fold, args.shot)
        return model_from_checkpoint(path, params), f"quickly trained ({path})"
    model = random_model(params, args.backbone, args.fold, args.shot)
    return model, f"random {args.backbone} weights"


def runner(
    model: HDMNet, params: Params, args: argparse.Namespace, cache_mb: int, batch: int = 16
) -> EpisodeRunner:
    return EpisodeRunner(
        model,
        layout.prepared_dir(params, "pascal"),
        layout.fold_dir(params, "pascal", args.fold),
        args.shot,
        args.size,
        annotation=params.eval.support_annotation,
        cache_mb=cache_mb,
        batch_size=batch,
    )


# -- figures ----------------------------------------------------------------------------------


def counts(result: ProtocolResult) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for seed, meters in result.meters.items():
        for name in OUTPUTS:
            m = meters[name]
            out[f"{seed}/{name}"] = [
                m.class_inter.tolist(),
                m.class_union.tolist(),
                m.fb_inter.tolist(),
                m.fb_union.tolist(),
            ]
    return out


def miou(result: ProtocolResult, name: str = "final") -> float:
    values = [100 * m[name].miou() for m in result.meters.values()]
    return sum(values) / len(values)


@contextlib.contextmanager
def stubbed_decode(model: HDMNet, enabled: bool) -> Iterator[None]:
    """Replace the decoding by zeros of the right shapes (the encoding side stays real)."""
    if not enabled:
        yield
        return

    def decode_codes(query: Any, supports: Any, *args: Any, **kwargs: Any) -> HDMNetOutput:
        b, (h, w) = len(query), query.image_size
        zeros = torch.zeros(b, 2, h, w)
        corr = [torch.zeros(b, 1, 1) for _ in range(model.num_stages)]
        return HDMNetOutput(zeros, zeros, torch.zeros(b, 16, h, w), None, corr)

    def pair_priors(query: Any, supports: Any, pairs: Any = None) -> torch.Tensor:
        return torch.zeros(len(pairs), 2, query.feat5.shape[-1])

    model.decode_codes = decode_codes  # type: ignore[method-assign]
    model.pair_priors = pair_priors  # type: ignore[method-assign]
    try:
        yield
    finally:
        del model.decode_codes, model.pair_priors


def load() -> str:
    return "/".join(f"{x:.1f}" for x in os.getloadavg())


def timed(fn: Any) -> tuple[ProtocolResult, float]:
    start = time.perf_counter()
    result = fn()
    return result, time.perf_counter() - start


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--params", type=Path, default=ROOT / "params.yaml")
    parser.add_argument("-s", "--set", dest="overrides", action="append", default=[])
    parser.add_argument("--data", type=Path, help="prepared data folder (paths.data)")
    parser.add_argument("--scale", type=float, help="synth.scale of the generated data")
    parser.add_argument("--checkpoint", type=Path, help="HDMNet checkpoint to evaluate")
    parser.add_argument("--backbone", default="small", help="without --checkpoint")
    parser.add_argument("--size", type=int, help="image size (default: the preset's)")
    parser.add_argument("--fold", type=int, default=0)
    parser.add_argument("--shot", type=int, default=1)
    parser.add_argument("--seeds", type=int, help="first N of eval.seeds (default all)")
    parser.add_argument("--episodes", type=int, help="per seed (default: the preset's)")
    parser.add_argument("--cache-mb", type=int, help="default: eval.cache_mb")
    parser.add_argument("--straight-episodes", type=int, default=48)
    parser.add_argument("--check-seeds", type=int, default=2)
    parser.add_argument("--check-episodes", type=int, default=48)
    parser.add_argument(
        "--stub-decode",
        action="store_true",
        help="planned run: encode for real, decode with a stub (time extrapolated)",
    )
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", type=Path, help="also write the figures here")
    parser.add_argument("--keep", action="store_true", help="keep the temp folder")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(args.threads)

    work = Path(tempfile.mkdtemp(prefix="hdmnet-bench-eval-"))
    overrides = [*args.overrides, "tracking.enabled=false"]
    overrides += [f"paths.data={args.data or work / 'data'}", f"paths.results={work / 'results'}"]
    if args.scale is not None:
        overrides.append(f"synth.scale={args.scale}")
    params = load_params(args.params, overrides)
    try:
        if args.data is None:
            prepare_data(params)
        model, source = load_model(args, params, work)
        if args.checkpoint:
            args.shot = model.shot
        if args.size is None:  # ResNet-50 with random weights: the paper's size
            random_weights = not args.checkpoint and args.backbone != "small"
            args.size = 473 if random_weights else params.meta.pascal.image_size
        seeds = list(params.eval.seeds)[: args.seeds or None]
        episodes = args.episodes or params.meta.pascal.test_episodes
        cache_mb = params.eval.cache_mb if args.cache_mb is None else args.cache_mb
        figures = run_all(args, params, model, seeds, episodes, cache_mb, source)
    finally:
        if args.keep:
            print(f"temp folder kept: {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2))
    return 0 if figures["identical"] and figures["single_drift"] <= 0.05 else 1


def run_all(
    args: argparse.Namespace,
    params: Params,
    model: HDMNet,
    seeds: list[int],
    episodes: int,
    cache_mb: int,
    source: str,
) -> dict[str, Any]:
    fold_list = layout.fold_dir(params, "pascal", args.fold) / "val.txt"
    queries = sum(1 for line in fold_list.read_text().splitlines() if line.strip())
    print(
        f"model: {source}; {model.shot} shot(s), {args.size} px, fold {args.fold} "
        f"({queries} test list items), {len(seeds)} seeds x {episodes} episodes, "
        f"cache {cache_mb} MB, {torch.get_num_threads()} thread(s), torch {torch.__version__}, "
        f"load average {load()}",
        flush=True,
    )
    total = len(seeds) * episodes

    # 1. The straightforward protocol on a reduced count, extrapolated.
    n = min(args.straight_episodes, episodes)
    straight, straight_s = timed(
        lambda: runner(model, params, args, 0).run(seeds[:1], n, desc="straightforward")
    )
    per_1000 = 1000 * straight_s / n
    decode_per_episode = straight.cache["decode_seconds"] / n
    print(
        f"straightforward: {straight_s:8.1f} s for {n} episodes = {per_1000:7.1f} s per 1000 "
        f"episodes (EXTRAPOLATED from {n} episodes); {straight.cache['passes_per_episode']:.0f} "
        f"backbone passes per episode; decoding {decode_per_episode:.3f} s per episode",
        flush=True,
    )

    # 2. The planned protocol, in full (with --stub-decode: its encoding in full, the decoding
    # replaced by a stub and its time extrapolated from the decoded episodes above).
    with stubbed_decode(model, args.stub_decode):
        planned, planned_s = timed(
            lambda: runner(model, params, args, cache_mb).run(seeds, episodes, desc="planned")
        )
    c = planned.cache
    note = ""
    if args.stub_decode:
        planned_s = c["encode_seconds"] + decode_per_episode * total
        note = (
            f" (encoding measured in full: {c['encode_seconds']:.1f} s; decoding EXTRAPOLATED: "
            f"{total} x {decode_per_episode:.3f} s from the straightforward run)"
        )
    print(
        f"planned:          {planned_s:8.1f} s for {total} episodes = "
        f"{1000 * planned_s / total:7.1f} s per 1000 episodes{note}; {c['backbone_passes']} "
        f"backbone passes ({c['passes_per_episode']:.3f} per episode), encode "
        f"{c['encode_seconds']:.1f} s, peak kept {c['bytes'] / 2**20:.0f} MB, evictions "
        f"{c['evictions']}, prior maps reused {c['prior_hits']} / computed {c['prior_misses']}"
        + (
            ""
            if args.stub_decode
            else f"; mIoU {miou(planned):.2f} (meta {miou(planned, 'meta'):.2f})"
        ),
        flush=True,
    )
    ratio = per_1000 / (1000 * planned_s / total)
    print(f"speed-up of the planned protocol: x{ratio:.1f} per episode", flush=True)

    # 3. Identical counts on a common subset; 4. one episode at a time within 0.05 mIoU.
    check_seeds = seeds[: args.check_seeds]
    m = min(args.check_episodes, episodes)
    a = runner(model, params, args, cache_mb).run(check_seeds, m, desc="check planned")
    b = runner(model, params, args, 0).run(check_seeds, m, desc="check straightforward")
    single = runner(model, params, args, 0, batch=1).run(check_seeds, m, desc="check single")
    identical = counts(a) == counts(b)
    drift = max(
        abs(100 * a.meters[s][name].miou() - 100 * single.meters[s][name].miou())
        for s in check_seeds
        for name in OUTPUTS
    )
    print(
        f"check on {len(check_seeds)} seeds x {m} episodes: planned and straightforward counts "
        f"identical: {identical}; one episode at a time differs by {drift:.4f} mIoU points "
        f"(limit 0.05)",
        flush=True,
    )
    print(f"load average at the end: {load()} (2 cores, shared)", flush=True)
    return {
        "source": source,
        "shot": model.shot,
        "size": args.size,
        "seeds": len(seeds),
        "episodes_per_seed": episodes,
        "test_list_items": queries,
        "cache_mb": cache_mb,
        "threads": torch.get_num_threads(),
        "planned_seconds": planned_s,
        "planned_s_per_1000": 1000 * planned_s / total,
        "planned_cache": planned.cache,
        "planned_miou": None if args.stub_decode else miou(planned),
        "stub_decode": args.stub_decode,
        "decode_s_per_episode": decode_per_episode,
        "straightforward_episodes": n,
        "straightforward_seconds": straight_s,
        "straightforward_s_per_1000_extrapolated": per_1000,
        "speedup": ratio,
        "identical": identical,
        "single_drift": drift,
    }


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
