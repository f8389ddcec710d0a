"""params.yaml for DVC: complete parameter files, the paper preset, and what dvc.yaml needs.

dvc.yaml lists, per stage, the parameter keys of ``hdmnet.identity.STAGE_KEYS`` and DVC refuses
to run a stage whose keys are missing from params.yaml. The CLI fills missing keys from the
schema's defaults; DVC cannot, so the params.yaml that DVC tracks must spell out every tracked key.

DVC templating has no conditionals, so the graph cannot drop the ``synth`` stage by itself when
``data.source`` is ``official``. ``write`` does it: it writes the complete parameters of a preset
to params.yaml and removes the ``synth`` stage (and download's dependency on its output) from
dvc.yaml for the official archives. Usage, from the project root::

    python -m hdmnet.dvc_params presets/paper.yaml   # params.yaml + dvc.yaml for the paper
    python -m hdmnet.dvc_params --check              # what `dvc repro` would trip over
"""

from __future__ import annotations

import argparse
import io
import sys
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from hdmnet.config import Params, ParamsError, load_params
from hdmnet.fileio import write_text
from hdmnet.identity import stage_keys

SYNTH_STAGE = "synth"
SYNTH_DEP = "${paths.data}/synth"


def tracked_keys(params: Params) -> list[str]:
    """Every parameter key dvc.yaml tracks for these parameters (STAGE_KEYS over the grid)."""
    keys = stage_keys("synth") if params.data.source == "synthetic" else []
    keys += stage_keys("download") + stage_keys("prepare")
    for dataset in params.grid.datasets:
        for stage in ("train_base", "train", "evaluate"):
            keys += stage_keys(stage, dataset)
    keys += [f"variants.{name}" for name in params.ablation.all_variants()]
    return list(dict.fromkeys(keys))


def missing_keys(raw: Mapping[str, Any], keys: Iterable[str]) -> list[str]:
    """The dotted ``keys`` that ``raw`` (a parameter file as read) does not spell out."""
    missing = []
    for key in keys:
        node: Any = raw
        for part in key.split("."):
            if not isinstance(node, Mapping) or part not in node:
                missing.append(key)
                break
            node = node[part]
    return missing


def graph_problems(params: Params) -> list[str]:
    """Grids the DVC graph cannot express (the Snakemake graph can).

    dvc.yaml downloads and prepares ``grid.datasets`` and trains base learners on the main grid;
    the ablation grid reuses them, so it must lie inside the main grid, and each variant is
    compared with the full model at the same shot.
    """
    grid, ablation = params.grid, params.ablation
    problems = []
    if not ablation.all_variants():
        return problems
    for axis in ("datasets", "backbones", "folds"):
        outside = [v for v in getattr(ablation, axis) if v not in getattr(grid, axis)]
        if outside:
            problems.append(
                f"ablation.{axis} {outside} not in grid.{axis}: dvc.yaml builds data and base "
                f"learners for the main grid only; add them to grid.{axis}"
            )
    shots = sorted({shot for _, shot in ablation.settings()} - set(grid.shots))
    if shots:
        problems.append(
            f"ablation shots {shots} not in grid.shots: each variant is compared with the full "
            "model at the same shot; add them to grid.shots"
        )
    return problems


def params_text(params: Params, source: str) -> str:
    header = (
        f"# Complete parameters written by `python -m hdmnet.dvc_params {source}`: every key\n"
        "# spelled out (schema defaults filled in), so that DVC can track each one.\n"
    )
    return header + yaml.safe_dump(params.to_dict(), sort_keys=False)


def adapt_graph(text: str, source: str) -> str:
    """dvc.yaml's text for a data source: without the ``synth`` stage for the official archives.

    Comments and layout are kept (round-trip YAML). A graph already written for the official
    archives cannot be turned back; ``git checkout dvc.yaml`` restores it.
    """
    from ruamel.yaml import YAML  # DVC's own YAML library, installed with DVC

    loader = YAML()
    loader.preserve_quotes = True
    loader.width = 4096
    doc = loader.load(text)
    stages = doc["stages"]
    if source == "synthetic":
        if SYNTH_STAGE not in stages:
            raise ParamsError(
                "dvc.yaml has no synth stage (it was written for the official archives); "
                "restore it with `git checkout dvc.yaml`"
            )
        return text
    if SYNTH_STAGE not in stages:
        return text
    del stages[SYNTH_STAGE]
    download = stages["download"]["do"]
    deps = [dep for dep in download.get("deps", []) if dep != SYNTH_DEP]
    if deps:
        download["deps"] = deps
    else:
        del download["deps"]
    out = io.StringIO()
    loader.dump(doc, out)
    return out.getvalue()


def write(preset: Path, params_file: Path, dvc_yaml: Path) -> Params:
    """Write ``preset``'s complete parameters to ``params_file`` and fit ``dvc_yaml`` to it."""
    params = load_params(preset)
    problems = graph_problems(params)
    if problems:
        raise ParamsError(f"{preset}: " + "; ".join(problems))
    graph = adapt_graph(dvc_yaml.read_text("utf-8"), params.data.source)
    write_text(params_file, params_text(params, str(preset)))
    if graph != dvc_yaml.read_text("utf-8"):
        write_text(dvc_yaml, graph)
    return params


def check(params_file: Path, dvc_yaml: Path) -> list[str]:
    """What keeps DVC from running ``params_file`` with ``dvc_yaml``: one message per problem."""
    raw = yaml.safe_load(params_file.read_text("utf-8")) or {}
    params = load_params(params_file)
    problems = graph_problems(params)
    missing = missing_keys(raw, tracked_keys(params))
    if missing:
        problems.append(
            f"{params_file} lacks keys that dvc.yaml tracks (DVC fills no defaults): "
            + ", ".join(missing)
            + "; spell them out, or write every key to params.yaml with "
            + f"`python -m hdmnet.dvc_params {params_file}`"
        )
    stages = (yaml.safe_load(dvc_yaml.read_text("utf-8")) or {}).get("stages", {})
    synthetic = params.data.source == "synthetic"
    if synthetic != (SYNTH_STAGE in stages):
        problems.append(
            f"{dvc_yaml} {'lacks' if synthetic else 'has'} the synth stage but data.source is "
            f"{params.data.source}: run `python -m hdmnet.dvc_params {params_file}`"
            + (" after `git checkout dvc.yaml`" if synthetic else "")
        )
    return problems


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m hdmnet.dvc_params",
        description="Write a preset's complete parameters to params.yaml for DVC (and drop the "
        "synth stage from dvc.yaml for the official archives), or check params.yaml.",
    )
    parser.add_argument(
        "preset", nargs="?", type=Path, help="parameter file, e.g. presets/paper.yaml"
    )
    parser.add_argument("--check", action="store_true", help="only check params.yaml and dvc.yaml")
    parser.add_argument(
        "--params", type=Path, default=Path("params.yaml"), help="DVC's params file"
    )
    parser.add_argument("--dvc-yaml", type=Path, default=Path("dvc.yaml"), help="the stage file")
    args = parser.parse_args(argv)
    if not args.check and args.preset is None:
        parser.error("give a preset to write, or --check")
    target = args.preset if args.check and args.preset else args.params
    try:
        if not args.check:
            params = write(args.preset, args.params, args.dvc_yaml)
            print(f"{args.params}: {params.preset} preset, every key spelled out")
        problems = check(target, args.dvc_yaml)
    except (ParamsError, OSError) as error:
        print(f"dvc_params: error: {error}", file=sys.stderr)
        return 2
    for problem in problems:
        print(f"dvc_params: {problem}", file=sys.stderr)
    if not problems:
        print(f"{target} and {args.dvc_yaml}: ready for `dvc repro`")
    return 1 if problems else 0


if __name__ == "__main__":
    raise SystemExit(main())
