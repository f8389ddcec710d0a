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
    python -m hdmnet.dvc_params --plots-template     # the offline page of `dvc plots show`
    python -m hdmnet.dvc_params --dry-run -S meta.pascal.epochs=6   # what that experiment runs

``dvc plots show`` writes a page that loads vega, vega-lite and vega-embed from a CDN: offline
(clusters, this project's machines) the page stays blank. .dvc/config names an HTML template
(``plots.html_template``, relative to .dvc/) with the three libraries inlined instead, from the
copies Snakemake ships for its own reports; ``write_plots_template`` writes it (``make install``
runs it) after checking that their major versions are those DVC's page asks for.

``dvc exp run --dry`` cannot say which stages an experiment would run here: DVC 3.67 runs a dry
experiment in a temporary clone of the git repository, where no data or result is checked out
(a dry run checks out nothing), and fails on the first stage that must run ("No such file or
directory: .dvc/tmp/exps/standalone/.../data/synth"; treeverse/dvc#10135). ``dry_run`` answers
instead, in a mirror of the project where the data and results are present.
"""

from __future__ import annotations

import argparse
import fcntl
import io
import re
import shutil
import subprocess
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

# Where dry_run mirrors the project (a fixed path: DVC keys its hash state by the project root).
DRY_RUN_DIR = Path(".dvc/tmp/hdmnet-dry-run")
# plots.html_template in .dvc/config names it relative to .dvc/ (git-ignored .dvc/tmp).
PLOTS_TEMPLATE = Path(".dvc/tmp/plots/offline-template.html")
# The libraries DVC's plots page loads from its CDN, in load order, as Snakemake's assets name them.
VEGA_ASSETS = ("vega/vega.js", "vega-lite/vega-lite.js", "vega-embed/vega-embed.js")
# DVC's page with the libraries inlined where its own template has `{scripts}` (the CDN tags).
# DVC fills in {refresh_tag} and {plot_divs}; without {scripts} it adds no CDN tag.
PAGE = """<!DOCTYPE html>
<html>
<head>
    <meta charset="utf-8">
    {{refresh_tag}}
    <title>DVC Plot</title>
    <!-- {libraries} inlined from Snakemake's assets by `python -m hdmnet.dvc_params
         --plots-template`: this page loads nothing from the network. -->
{scripts}
    <style>
        table {{
            border-spacing: 15px;
        }}
    </style>
</head>
<body>
    {{plot_divs}}
</body>
</html>
"""


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


def dvc_vega_versions() -> dict[str, str]:
    """Library -> version of the scripts DVC's plots page loads from its CDN."""
    from dvc_render.vega import VegaRenderer

    return dict(re.findall(r"npm/(vega(?:-lite|-embed)?)@([\d.]+)", VegaRenderer.SCRIPTS))


def plots_template() -> str:
    """DVC's plots page with vega, vega-lite and vega-embed inlined (Snakemake's copies, with
    their licences). Raises ParamsError when a copy is missing or its major version is not the
    one DVC's page loads (the vega-lite specs DVC writes are for that major version)."""
    from snakemake.assets import Assets

    wanted = dvc_vega_versions()
    scripts, names = [], []
    for asset in VEGA_ASSETS:
        library = asset.split("/")[0]
        version = Assets.get_version(asset) or "unknown"
        if library not in wanted or version.split(".")[0] != wanted[library].split(".")[0]:
            raise ParamsError(
                f"Snakemake ships {library} {version}, DVC's plots page loads "
                f"{library}@{wanted.get(library, '?')}: versions do not fit, the offline "
                "plots template cannot be written"
            )
        folder = Path(str(Assets.base_path())) / library
        try:
            code = (folder / Path(asset).name).read_text("utf-8")
            notice = (folder / "LICENSE").read_text("utf-8")
        except OSError as error:
            raise ParamsError(f"{asset}: not found in Snakemake's assets ({error})") from error
        # No source-map fetch; nothing that ends the script element early.
        code = re.sub(r"^//# sourceMappingURL=.*$", "", code, flags=re.M)
        code = code.replace("</script", "<\\/script")
        notice = notice.replace("*/", "* /")
        scripts.append(f"    <script>\n/* {library} {version}\n{notice}*/\n{code}\n    </script>")
        names.append(f"{library} {version}")
    return PAGE.format(libraries=", ".join(names), scripts="\n".join(scripts))


def write_plots_template(path: Path = PLOTS_TEMPLATE) -> bool:
    """Write the offline plots template to ``path`` unless it is there already; returns whether
    it was written."""
    text = plots_template()
    if path.is_file() and path.read_text("utf-8") == text:
        return False
    write_text(path, text)
    return True


def dry_run(overrides: Sequence[str], root: Path = Path(".")) -> list[str]:
    """The stages ``dvc exp run -S OVERRIDE ...`` would run in the project at ``root``, running
    nothing: what ``dvc exp run --dry`` would print if it could (see the module's docstring).

    A mirror of the project in .dvc/tmp: dvc.yaml, dvc.lock, .dvc/config with DVC's cache, the
    data and results folders as symlinks, and params.yaml with the overrides applied as ``-S``
    applies them (DVC's own function). There ``dvc repro --dry --force-downstream`` lists the
    stages that changed and every stage downstream of them (a dry run changes no output, so
    without --force-downstream DVC would see their inputs unchanged). The overridden
    parameters are validated first, as any stage would.
    """
    from dvc.exceptions import DvcException
    from dvc.repo import Repo
    from dvc.utils.cli_parse import to_path_overrides
    from dvc.utils.hydra import apply_overrides

    root = root.resolve()
    per_file = to_path_overrides(overrides)
    others = sorted(set(per_file) - {"params.yaml"})
    if others:
        raise ParamsError(f"-S: only params.yaml overrides are supported, not {others}")
    params = load_params(root / "params.yaml")
    with Repo(str(root)) as repo:
        cache = repo.cache.local_cache_dir
    mirror = root / DRY_RUN_DIR
    mirror.parent.mkdir(parents=True, exist_ok=True)
    with open(mirror.parent / f"{mirror.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one dry run at a time in a project
        try:
            _mirror(root, mirror, params, cache)
            if per_file:
                try:
                    apply_overrides(str(mirror / "params.yaml"), per_file["params.yaml"])
                except DvcException as error:
                    cause = f" ({error.__cause__})" if error.__cause__ else ""
                    raise ParamsError(f"-S {' '.join(overrides)}: {error}{cause}") from error
            load_params(mirror / "params.yaml")  # a bad value fails here, naming its key
            done = subprocess.run(
                [sys.executable, "-m", "dvc", "repro", "--dry", "--force-downstream"],
                cwd=mirror,
                stdin=subprocess.DEVNULL,
                capture_output=True,
                text=True,
            )
        finally:
            shutil.rmtree(mirror, ignore_errors=True)  # symlinks are removed, not followed
    if done.returncode != 0:
        raise ParamsError(f"dvc repro --dry failed:\n{(done.stdout + done.stderr).strip()}")
    return re.findall(r"^Running stage '([^']+)'", done.stdout, flags=re.M)


def _mirror(root: Path, mirror: Path, params: Params, cache: str) -> None:
    """The project's DVC files in ``mirror``, its data and results folders linked in."""
    shutil.rmtree(mirror, ignore_errors=True)
    (mirror / ".dvc").mkdir(parents=True)
    for name in ("dvc.yaml", "dvc.lock", "params.yaml", ".dvcignore", ".dvc/config"):
        if (root / name).is_file():
            shutil.copyfile(root / name, mirror / name)
    (mirror / ".dvc" / "config.local").write_text(
        f"[core]\n    no_scm = true\n[cache]\n    dir = {cache}\n", "utf-8"
    )
    for folder in (params.paths.data, params.paths.results):
        first = Path(folder).parts[0] if not Path(folder).is_absolute() else None
        if first and (root / first).exists() and not (mirror / first).exists():
            (mirror / first).symlink_to(root / first, target_is_directory=True)


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
    parser.add_argument(
        "--plots-template",
        nargs="?",
        type=Path,
        const=PLOTS_TEMPLATE,
        metavar="FILE",
        help=f"write the offline HTML template of `dvc plots show` (default: {PLOTS_TEMPLATE}, "
        "which .dvc/config names) and exit",
    )
    parser.add_argument(
        "--dry-run",
        action="store_true",
        help="print the stages `dvc exp run -S ...` would run, running nothing (what `dvc exp "
        "run --dry` cannot tell in DVC 3.67)",
    )
    parser.add_argument(
        "-S",
        "--set-param",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="with --dry-run: a parameter override, as `dvc exp run -S` takes it (repeatable)",
    )
    args = parser.parse_args(argv)
    if args.set_param and not args.dry_run:
        parser.error("-S goes with --dry-run")
    if args.dry_run:
        try:
            stages = dry_run(args.set_param)
        except (ParamsError, OSError) as error:
            print(f"dvc_params: error: {error}", file=sys.stderr)
            return 2
        for stage in stages:
            print(stage)
        command = " ".join(["dvc exp run", *(f"-S {o!r}" for o in args.set_param)])
        print(f"{len(stages)} stage(s) would run: `{command}` runs them", file=sys.stderr)
        return 0
    if args.plots_template is not None:
        try:
            written = write_plots_template(args.plots_template)
        except (ParamsError, OSError) as error:
            print(f"dvc_params: error: {error}", file=sys.stderr)
            return 2
        if written:
            print(f"{args.plots_template}: offline template of `dvc plots show` written")
        return 0
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
