"""The DVC stage graph: the same jobs, commands, outputs and parameters as the Snakemake one.

dvc.yaml is rendered by DVC itself (``Repo.index``, what ``dvc stage list`` shows) in a temporary
project holding the preset's complete parameters; Snakemake's jobs come from ``snakemake -n`` on
a copy of the workflow. Nothing runs and nothing is written into the checkout. The end-to-end
test runs ``dvc repro`` and ``dvc exp run`` for real on a reduced default preset (about 90 s,
in CI: the issue asks CI to run a DVC repro).
"""

from __future__ import annotations

import functools
import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from hdmnet import dvc_params
from hdmnet.config import ParamsError, load_params
from hdmnet.identity import stage_keys

# DVC 3.67 itself trips over a pygtrie deprecation on every graph build.
pytestmark = pytest.mark.filterwarnings("ignore:_NoneStep.value:DeprecationWarning")

ROOT = Path(__file__).resolve().parents[2]
PRESETS = {"default": ROOT / "params.yaml", "paper": ROOT / "presets" / "paper.yaml"}
# DVC stage (the part of its name before "@") -> Snakemake rule.
RULE_OF = {
    "synth": "synth",
    "download": "download",
    "prepare": "prepare",
    "train_base": "train_base",
    "train": "train",
    "train_variant": "train",
    "train_kshot_variant": "train",
    "evaluate": "evaluate",
    "evaluate_variant": "evaluate",
    "evaluate_kshot_variant": "evaluate",
    "aggregate": "aggregate",
    "report": "report",
}


# --- the two graphs -------------------------------------------------------------------------


@dataclass(frozen=True)
class Stage:
    name: str
    cmd: str
    params: frozenset[str]
    deps: frozenset[str]
    outs: dict[str, dict]  # path -> {"metric", "plot", "cache"}

    @property
    def group(self) -> str:
        return self.name.split("@")[0]


@dataclass(frozen=True)
class Job:
    rule: str
    inputs: frozenset[str]
    outputs: frozenset[str]
    shell: str


def dvc_project(dest: Path, preset: Path) -> Path:
    """A DVC project in ``dest``: dvc.yaml fitted to the preset, its complete params.yaml."""
    from dvc.repo import Repo

    dest.mkdir(parents=True)
    shutil.copy(ROOT / "dvc.yaml", dest / "dvc.yaml")
    dvc_params.write(preset, dest / "params.yaml", dest / "dvc.yaml")
    Repo.init(str(dest), no_scm=True).close()
    return dest


def dvc_stages(root: Path) -> tuple[list[Stage], set[tuple[str, str]]]:
    from dvc.repo import Repo

    with Repo(str(root)) as repo:
        stages = []
        for stage in repo.index.stages:
            params: set[str] = set()
            for dep in stage.deps:
                params.update(getattr(dep, "params", None) or [])
            stages.append(
                Stage(
                    stage.name,
                    " ".join(stage.cmd.split()),
                    frozenset(params),
                    frozenset(d.def_path for d in stage.deps if not hasattr(d, "params")),
                    {
                        o.def_path: {"metric": o.metric, "plot": o.plot, "cache": o.use_cache}
                        for o in stage.outs
                    },
                )
            )
        edges = {(a.name, b.name) for a, b in repo.index.graph.edges}
    return stages, edges


def workflow_copy(dest: Path) -> Path:
    dest.mkdir(parents=True)
    for name in ("Snakefile", "params.yaml"):
        shutil.copy(ROOT / name, dest / name)
    for name in ("workflow", "presets"):
        shutil.copytree(ROOT / name, dest / name, symlinks=False)
    return dest


def snakemake_jobs(root: Path, *args: str) -> list[Job]:
    """Every job of ``snakemake -n`` on an empty tree (``rule all`` left out)."""
    command = [sys.executable, "-m", "snakemake", "-n", "-p", "--cores", "1", *args]
    done = subprocess.run(command, cwd=root, capture_output=True, text=True)
    text = done.stdout + done.stderr
    assert done.returncode == 0, text
    jobs = []
    for block in re.split(r"\n(?=(?:local)?rule \w+:)", text)[1:]:
        rule = re.match(r"(?:local)?rule (\w+):", block).group(1)
        if rule == "all":
            continue

        def field(name: str, block: str = block) -> frozenset[str]:
            found = re.search(rf"^\s+{name}: (.*)$", block, re.M)
            return frozenset(found.group(1).split(", ")) if found else frozenset()

        shell = re.search(r"^Shell command: (.*)$", block, re.M).group(1)
        jobs.append(Job(rule, field("input"), field("output"), shell))
    return jobs


POOL = ThreadPoolExecutor(max_workers=2)


@pytest.fixture(scope="module")
def graphs(tmp_path_factory):
    """preset -> (DVC stages, DVC edges, Snakemake jobs), for the default and paper presets."""
    tmp = tmp_path_factory.mktemp("graphs")
    smk = {
        "default": POOL.submit(snakemake_jobs, workflow_copy(tmp / "smk-default")),
        "paper": POOL.submit(
            snakemake_jobs,
            workflow_copy(tmp / "smk-paper"),
            "--configfile",
            "presets/paper.yaml",
        ),
    }
    out = {}
    for preset, path in PRESETS.items():
        stages, edges = dvc_stages(dvc_project(tmp / f"dvc-{preset}", path))
        out[preset] = (stages, edges, smk[preset].result())
    return out


def inside(path: str, folder: str) -> bool:
    return path.startswith(folder.rstrip("/") + "/")


@functools.cache
def dvc_only_outputs(preset: str) -> frozenset[str]:
    """DVC outputs Snakemake tracks only through a marker: the extracted archives."""
    params = load_params(PRESETS[preset])
    return frozenset(f"{params.paths.data}/raw/{d}" for d in params.grid.datasets)


def as_snakemake_files(stage: Stage, snakemake_files: set[str], extra: set[str]) -> frozenset:
    """A stage's outputs in Snakemake's terms: files as they are; a folder stands for the
    Snakemake outputs inside it (prepared.json in data/<dataset>, ...)."""
    files = set()
    for out in stage.outs:
        if out in snakemake_files:
            files.add(out)
            continue
        held = {f for f in snakemake_files if inside(f, out)}
        assert held or out in extra, f"{stage.name}: output {out} is no Snakemake output"
        files |= held
    return frozenset(files)


def matched(preset: str, graphs) -> list[tuple[Stage, Job]]:
    """DVC stages paired with the Snakemake jobs that make the same files."""
    if preset in MATCHED:
        return MATCHED[preset]
    stages, _, jobs = graphs[preset]
    files = {f for job in jobs for f in job.outputs}
    by_outputs = {job.outputs: job for job in jobs}
    pairs = []
    for stage in stages:
        outputs = as_snakemake_files(stage, files, dvc_only_outputs(preset))
        assert outputs in by_outputs, f"{stage.name}: no Snakemake job makes {sorted(outputs)}"
        pairs.append((stage, by_outputs[outputs]))
    MATCHED[preset] = pairs
    return pairs


MATCHED: dict[str, list[tuple[Stage, Job]]] = {}


# --- equality with Snakemake ----------------------------------------------------------------


@pytest.mark.parametrize("preset", PRESETS)
def test_dvc_stages_make_the_same_files_as_the_snakemake_jobs(preset, graphs):
    stages, _, jobs = graphs[preset]
    files = {f for job in jobs for f in job.outputs}
    extra = dvc_only_outputs(preset)
    per_stage = Counter(as_snakemake_files(s, files, extra) for s in stages)
    per_job = Counter(job.outputs for job in jobs)
    # One stage per job, each making exactly that job's files (so the union is the same too).
    assert per_stage == per_job
    assert {f for s in stages for f in as_snakemake_files(s, files, extra)} == files
    assert all(not f.startswith("logs/") for f in files)


@pytest.mark.parametrize("preset", PRESETS)
def test_each_stage_runs_the_command_of_its_job(preset, graphs):
    for stage, job in matched(preset, graphs):
        assert RULE_OF[stage.group] == job.rule
        # Snakemake passes its resolved parameter file and a log; DVC reads params.yaml.
        shell = re.sub(r" --params \S+", "", job.shell)
        shell = re.sub(r" > \S+ 2>&1$", "", shell)
        assert stage.cmd == shell


@pytest.mark.parametrize("preset", PRESETS)
def test_dependencies_reach_the_same_upstream_stages(preset, graphs):
    """DVC declares more of what stages read (evaluate reads the prepared data, report the
    training records and checkpoints) but every stage has the same ancestors as its job."""
    stages, edges, jobs = graphs[preset]
    job_of = {stage.name: job for stage, job in matched(preset, graphs)}
    producer = {f: job for job in jobs for f in job.outputs}

    def closure(direct: dict) -> dict:
        def up(node, seen):
            for parent in direct[node]:
                if parent not in seen:
                    seen.add(parent)
                    up(parent, seen)
            return seen

        return {node: frozenset(up(node, set())) for node in direct}

    smk_direct = {job: {producer[f] for f in job.inputs if f in producer} for job in jobs}
    dvc_direct = {s.name: set() for s in stages}
    for child, parent in edges:  # DVC's graph points from a stage to the stages it needs
        dvc_direct[child].add(parent)
    smk_up = closure(smk_direct)
    dvc_up = closure(dvc_direct)
    for name, ancestors in dvc_up.items():
        assert {job_of[a] for a in ancestors} == set(smk_up[job_of[name]]), name


@pytest.mark.parametrize("preset", PRESETS)
def test_stage_params_are_the_snakemake_digest_keys(preset, graphs):
    stages, _, _ = graphs[preset]
    for stage in stages:
        rule = RULE_OF[stage.group]
        if rule in ("aggregate", "report"):
            assert stage.params == set(), stage.name
            continue
        dataset = re.search(r"(?:--dataset|prepare) (\w+)", stage.cmd)
        expected = set(stage_keys(rule, dataset.group(1) if dataset else None))
        variant = re.search(r"--variant (\w+)", stage.cmd)
        if variant and variant.group(1) != "full":
            expected.add(f"variants.{variant.group(1)}")
        assert stage.params == expected, stage.name


def test_paper_graph_has_no_generator(graphs):
    stages, _, _ = graphs["paper"]
    assert not any(s.group == "synth" for s in stages)
    assert not any(d.endswith("/synth") for s in stages for d in s.deps)
    counts = Counter(s.group for s in stages)
    assert counts["train"] == 32 and counts["train_variant"] + counts["train_kshot_variant"] == 28
    assert counts["train_kshot_variant"] == 4  # fixed_quirks at 5 shots on 4 folds
    evaluations = ("evaluate", "evaluate_variant", "evaluate_kshot_variant")
    assert counts["train_base"] == 16 and sum(counts[s] for s in evaluations) == 60


def test_metrics_plots_and_caching(graphs):
    """One metrics file, aggregate's compact metrics.json (on e02a155 every evaluation record
    was a metrics file: `dvc metrics show` printed 169 columns per record); the records are
    plain cached outputs."""
    stages, _, _ = graphs["default"]
    metrics = []
    for stage in stages:
        for path, out in stage.outs.items():
            assert out["cache"], f"{stage.name}: {path} is not cached"
            if out["metric"]:
                metrics.append((stage.name, path))
            elif path.endswith("record.json"):
                assert stage.group.startswith("train")
                assert out["plot"] == {"x": "epoch", "y": "val_miou"}, path
            else:
                assert not out["plot"], path
    assert metrics == [("aggregate", "results/tables/metrics.json")]
    evaluations = [s for s in stages if s.group.startswith("evaluate")]
    assert evaluations and all(
        len(s.outs) == 1 and next(iter(s.outs)).startswith("results/metrics/") for s in evaluations
    )
    records = [p for s in stages if s.group.startswith("train") for p in s.outs]
    assert sum(p.endswith("record.json") for p in records) == sum(
        s.group.startswith("train") for s in stages
    )


def test_plots_read_the_epochs_of_a_training_record():
    """DVC plots a JSON file's lists of objects: in a training record that is `epochs` only
    (the embedded configuration holds lists of numbers, which DVC skips)."""
    from dvc.render.converter.vega import get_datapoints

    epochs = [
        {"epoch": e, "loss": 1.0 / (e + 1), "lr": 0.001, "val_miou": 10.0 + e, "seconds": 2.0}
        for e in range(3)
    ]
    record = {
        "kind": "hdmnet-train",
        "epochs": epochs,
        "best_epoch": 2,
        "checkpoints": {"best.pth": {"sha256": "0" * 64}},
        "config": load_params(PRESETS["paper"]).to_dict(),
        "git": {"git_commit": "abc", "git_dirty": False},
        "hardware": {"hostname": "h", "device": "cpu"},
    }
    assert get_datapoints(json.loads(json.dumps(record))) == epochs


# --- params.yaml for DVC ----------------------------------------------------------------------


def test_params_yaml_spells_out_every_tracked_key():
    """DVC refuses to run a stage whose parameter keys are missing from params.yaml."""
    raw = yaml.safe_load(PRESETS["default"].read_text())
    missing = dvc_params.missing_keys(raw, dvc_params.tracked_keys(load_params(PRESETS["default"])))
    assert missing == [], f"params.yaml lacks keys dvc.yaml tracks: {missing}"


def test_check_passes_on_a_written_preset_and_names_missing_keys(tmp_path):
    shutil.copy(ROOT / "dvc.yaml", tmp_path / "dvc.yaml")
    params, graph = tmp_path / "params.yaml", tmp_path / "dvc.yaml"
    dvc_params.write(PRESETS["default"], params, graph)
    assert dvc_params.check(params, graph) == []
    raw = yaml.safe_load(params.read_text())
    del raw["model"]["stages"], raw["eval"]["seeds"]
    params.write_text(yaml.safe_dump(raw))
    (problem,) = dvc_params.check(params, graph)
    assert "model.stages" in problem and "eval.seeds" in problem


def test_write_paper_preset(tmp_path, capsys):
    shutil.copy(ROOT / "dvc.yaml", tmp_path / "dvc.yaml")
    args = ["--params", str(tmp_path / "params.yaml"), "--dvc-yaml", str(tmp_path / "dvc.yaml")]
    assert dvc_params.main([str(PRESETS["paper"]), *args]) == 0
    assert "ready for `dvc repro`" in capsys.readouterr().out
    written = load_params(tmp_path / "params.yaml")
    assert written.to_dict() == load_params(PRESETS["paper"]).to_dict()
    raw = yaml.safe_load((tmp_path / "params.yaml").read_text())
    assert dvc_params.missing_keys(raw, dvc_params.tracked_keys(written)) == []
    text = (tmp_path / "dvc.yaml").read_text()
    graph = yaml.safe_load(text)
    assert "synth" not in graph["stages"]
    assert "deps" not in graph["stages"]["download"]["do"]
    # The rest is untouched, comments included.
    original = yaml.safe_load((ROOT / "dvc.yaml").read_text())
    del original["stages"]["synth"], original["stages"]["download"]["do"]["deps"]
    assert graph == original
    assert text.startswith((ROOT / "dvc.yaml").read_text().splitlines()[0])
    # Writing it again changes nothing; going back to the embedded data needs the original.
    assert dvc_params.main([str(PRESETS["paper"]), *args]) == 0
    assert (tmp_path / "dvc.yaml").read_text() == text
    with pytest.raises(ParamsError, match=re.escape("git checkout dvc.yaml")):
        dvc_params.write(PRESETS["default"], tmp_path / "params.yaml", tmp_path / "dvc.yaml")
    assert dvc_params.main(["--check", str(PRESETS["default"]), *args[2:]]) == 1
    assert "lacks the synth stage" in capsys.readouterr().err


def test_grids_dvc_cannot_express_are_refused(tmp_path):
    raw = yaml.safe_load(PRESETS["default"].read_text())
    raw["ablation"]["backbones"] = ["resnet50"]
    raw["ablation"]["kshot_shots"] = [3]
    (tmp_path / "p.yaml").write_text(yaml.safe_dump(raw))
    problems = dvc_params.graph_problems(load_params(tmp_path / "p.yaml"))
    assert len(problems) == 2
    assert "ablation.backbones ['resnet50'] not in grid.backbones" in problems[0]
    assert "ablation shots [3] not in grid.shots" in problems[1]
    shutil.copy(ROOT / "dvc.yaml", tmp_path / "dvc.yaml")
    with pytest.raises(ParamsError, match=re.escape("not in grid.backbones")):
        dvc_params.write(tmp_path / "p.yaml", tmp_path / "params.yaml", tmp_path / "dvc.yaml")
    assert not (tmp_path / "params.yaml").exists()


# --- what DVC shows: the metrics file, offline plots --------------------------------------------


def test_metrics_file_is_a_handful_of_the_tables_numbers(tmp_path):
    """aggregate's metrics.json, dvc.yaml's one metrics file: per main setting the final
    output's mean mIoU and FB-IoU (the main table's) and the meta output's mean mIoU, per
    ablation variant its mean and delta (the ablation table's): 20 values for the default
    grid, where the records as metrics gave `dvc metrics show` 169 columns each."""
    import pandas as pd
    from tests.report.fixtures_records import default_params, write_grid

    from hdmnet import layout
    from hdmnet.layout import Run
    from hdmnet.report.build import METRICS_FILE, aggregate

    params = default_params(ROOT, tmp_path)
    write_grid(params, training=False)
    out = layout.tables_dir(params)
    assert out / METRICS_FILE in aggregate(params)
    summary = json.loads((out / METRICS_FILE).read_text())

    def leaves(node: dict) -> list[float]:
        return [x for v in node.values() for x in (leaves(v) if isinstance(v, dict) else [v])]

    assert len(leaves(summary)) == 2 * 3 + 7 * 2
    assert all(isinstance(v, float) for v in leaves(summary))
    main = pd.read_csv(out / "main.csv").set_index("shot")
    assert set(summary["main"]) == {"pascal-small-1shot", "pascal-small-5shot"}
    for shot in (1, 5):
        entry = summary["main"][f"pascal-small-{shot}shot"]
        assert entry["miou"] == pytest.approx(main.loc[shot, "mean"], abs=0.005)
        assert entry["fbiou"] == pytest.approx(main.loc[shot, "fbiou"], abs=0.005)
        records = [
            json.loads(
                layout.metrics_file(
                    params, Run("pascal", "small", "full", f, shot, 321)
                ).read_text()
            )
            for f in params.grid.folds
        ]
        meta = sum(r["outputs"]["meta"]["miou"] for r in records) / len(records)
        assert entry["meta_miou"] == pytest.approx(meta, abs=0.005)
    ablation = pd.read_csv(out / "ablation.csv")
    variants = {s: v for setting in summary["ablation"].values() for s, v in setting.items()}
    assert set(variants) == set(ablation["variant"]) - {"full"}
    for row in ablation[ablation["variant"] != "full"].itertuples():
        entry = summary["ablation"][f"pascal-small-{row.shot}shot"][row.variant]
        assert entry == pytest.approx({"miou": row.mean, "delta": row.mean_delta}, abs=0.005)


CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
# Headless, and no network at all: every proxied request is refused and no name resolves.
BROWSER = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--proxy-server=http://127.0.0.1:9",
    "--host-resolver-rules=MAP * ~NOTFOUND",
    "--virtual-time-budget=10000",  # let vega-embed finish drawing before the dump
]


def browse(tmp: Path, page: Path, *args: str) -> str:
    done = subprocess.run(
        [CHROMIUM, *BROWSER, f"--user-data-dir={tmp / 'chromium'}", *args, page.as_uri()],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    return done.stdout


def test_plots_template_inlines_the_vega_libraries_dvc_asks_for(tmp_path):
    wanted = dvc_params.dvc_vega_versions()
    assert set(wanted) == {"vega", "vega-lite", "vega-embed"}
    path = tmp_path / "template.html"
    assert dvc_params.write_plots_template(path)
    assert not dvc_params.write_plots_template(path)  # unchanged: not written again
    text = path.read_text()
    assert "{plot_divs}" in text and "{refresh_tag}" in text
    assert "{scripts}" not in text and "<script src" not in text and "cdn." not in text
    inlined = re.findall(r"^/\* (vega(?:-lite|-embed)?) (\d+)\.[\d.]+$", text, re.M)
    assert inlined == [
        (lib, wanted[lib].split(".")[0]) for lib in ("vega", "vega-lite", "vega-embed")
    ]
    assert text.count("<script>") == 3 and text.count("</script>") == 3


def test_dvc_plots_show_renders_offline_in_headless_chromium(tmp_path):
    """`dvc plots show` with the project's .dvc/config and the template `make install` writes
    draws the training curve with the network off; DVC's own page (vega from its CDN, as on
    e02a155) stays blank."""
    if not Path(CHROMIUM).exists():
        pytest.skip("chromium is not installed (scripts/ensure_test_tools.sh installs it)")
    from dvc.repo import Repo
    from dvc_render.html import PAGE_HTML

    project = tmp_path / "project"
    Repo.init(str(project), no_scm=True).close()
    shutil.copy(ROOT / ".dvc" / "config", project / ".dvc" / "config")
    dvc_params.write_plots_template(project / dvc_params.PLOTS_TEMPLATE)
    epochs = [{"epoch": e, "loss": 1.0 / (e + 1), "val_miou": 10.0 + 3 * e} for e in range(6)]
    (project / "record.json").write_text(json.dumps({"epochs": epochs}))
    (project / "dvc.yaml").write_text(
        "plots:\n  - record.json:\n      x: epoch\n      y: val_miou\n"
    )
    (tmp_path / "cdn.html").write_text(PAGE_HTML)
    run(project, sys.executable, "-m", "dvc", "plots", "show")
    cdn = ("--html-template", str(tmp_path / "cdn.html"), "-o", "cdn")
    run(project, sys.executable, "-m", "dvc", "plots", "show", *cdn)
    page, default = project / "dvc_plots" / "index.html", project / "cdn" / "index.html"
    assert "<script src" not in page.read_text() and "cdn.jsdelivr.net" in default.read_text()

    drawn = browse(tmp_path, page, "--dump-dom")
    assert re.search(r'<canvas width="\d+" height="\d+" class="marks"', drawn)
    assert "<canvas" not in browse(tmp_path, default, "--dump-dom")
    import numpy as np
    from PIL import Image

    shot = tmp_path / "plot.png"
    browse(tmp_path, page, f"--screenshot={shot}", "--window-size=800,600")
    pixels = np.asarray(Image.open(shot).convert("RGB"))
    inked = (pixels.min(axis=2) < 200).mean()  # axes, ticks, labels and the line
    assert 0.005 < inked < 0.5


def test_the_demo_records_its_run_in_dvc_only_with_params_yaml_values(
    tmp_path, monkeypatch, capsys
):
    from hdmnet.pipeline import record_in_dvc

    monkeypatch.chdir(tmp_path)
    shutil.copy(ROOT / "params.yaml", "params.yaml")
    assert record_in_dvc([], []) is False  # not a DVC project: nothing said or done
    assert capsys.readouterr().err == ""
    from dvc.repo import Repo

    Repo.init(".", no_scm=True).close()
    Path("dvc.yaml").write_text("stages: {}\n")
    assert record_in_dvc([], ["meta.pascal.epochs=6"]) is False
    assert "dvc.lock not updated: this run's parameters differ" in capsys.readouterr().err
    # An override equal to params.yaml's own value is params.yaml's run: recorded.
    assert record_in_dvc([], ["meta.pascal.epochs=5"]) is True
    assert "results recorded in dvc.lock for DVC (dvc commit, " in capsys.readouterr().out


# --- end to end -------------------------------------------------------------------------------

REDUCED = {
    "synth.scale": 0.3,
    "grid.folds": [0],
    "grid.shots": [1],
    "ablation.variants": ["stages_1"],
    "ablation.kshot_variants": [],
    "base.pascal.epochs": 1,
    "meta.pascal.epochs": 2,
    "meta.pascal.val_episodes": 20,
    "meta.pascal.test_episodes": 20,
    "eval.seeds": [510, 365],
    "tracking.enabled": False,
}


def run(root: Path, *command: str) -> str:
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    done = subprocess.run(command, cwd=root, env=env, capture_output=True, text=True)
    text = done.stdout + done.stderr
    assert done.returncode == 0, f"{' '.join(command)}:\n{text}"
    return text


def ran(output: str) -> set[str]:
    return set(re.findall(r"Running stage '([^']+)'", output))


def test_dvc_repro_and_experiments_end_to_end(tmp_path):
    root = tmp_path / "project"
    root.mkdir()
    shutil.copy(ROOT / "dvc.yaml", root / "dvc.yaml")
    params = load_params(PRESETS["default"], [f"{k}={json.dumps(v)}" for k, v in REDUCED.items()])
    (root / "params.yaml").write_text(yaml.safe_dump(params.to_dict(), sort_keys=False))
    (root / ".gitignore").write_text("/data/\n/results/\n/mlflow.db\n")
    run(root, "git", "init", "-q")
    run(root, "git", "config", "user.email", "test@example.com")
    run(root, "git", "config", "user.name", "test")
    run(root, sys.executable, "-m", "dvc", "init", "-q")
    shutil.copy(ROOT / ".dvc" / "config", root / ".dvc" / "config")  # the project's settings
    dvc = (sys.executable, "-m", "dvc")

    everything = {s for s in ran(run(root, *dvc, "repro"))}
    assert {s.split("@")[0] for s in everything} == set(RULE_OF) - {
        "train_kshot_variant",
        "evaluate_kshot_variant",
    }
    assert "Data and pipelines are up to date" in run(root, *dvc, "status")
    started = time.perf_counter()
    assert ran(run(root, *dvc, "repro")) == set()
    noop = time.perf_counter() - started
    print(f"no-op dvc repro of {len(everything)} stages: {noop:.1f} s")
    metrics = json.loads(run(root, *dvc, "metrics", "show", "--json"))
    (shown,) = metrics.values()  # the workspace: one file, a handful of numbers
    assert list(shown["data"]) == ["results/tables/metrics.json"]
    assert set(shown["data"]["results/tables/metrics.json"]["data"]) == {"main", "ablation"}
    run(root, "git", "add", "-A")
    run(root, "git", "commit", "-qm", "baseline")

    # An ablation-variant change reruns that variant's stages, tables and report only.
    out = run(root, *dvc, "exp", "run", "-S", "variants.stages_1={model.stages: 2}")
    assert ran(out) == {
        "train_variant@stages_1-pascal-small-0-1-321",
        "evaluate_variant@stages_1-pascal-small-0-1-321",
        "aggregate",
        "report",
    }
    # A meta-learning change retrains every meta-learner but no base learner.
    out = run(root, *dvc, "exp", "run", "-S", "meta.pascal.epochs=1")
    assert {s.split("@")[0] for s in ran(out)} == {
        "train",
        "train_variant",
        "evaluate",
        "evaluate_variant",
        "aggregate",
        "report",
    }
    shown = json.loads(run(root, *dvc, "exp", "show", "--json"))
    exps = [r for row in shown for e in (row.get("experiments") or []) for r in e["revs"]]
    assert len(exps) == 2
    for exp in exps:  # the metrics of every experiment are readable (from the cache)
        values = exp["data"]["metrics"]
        assert list(values) == ["results/tables/metrics.json"], values
        assert "pascal-small-1shot" in values["results/tables/metrics.json"]["data"]["main"]
