"""Where every artefact lives. The CLI, the Snakefile, dvc.yaml and the tests all use these paths.

data/                       inputs (never committed)
  synth/                    generated archives + manifest.json (default preset)
  archives/                 downloaded and verified archives
  raw/{pascal,coco}/        extracted archives
  {pascal,coco}/            prepared images, masks, full lists, pixel counts
  {pascal,coco}/folds/<split>/fold<i>/  fold lists (train/val, per-class lists, summary)
results/
  base/<dataset>/<backbone>/fold<i>/            base learner (PSPNet) checkpoints and record
  meta/<dataset>/<backbone>/<variant>/fold<i>/shot<k>/   HDMNet checkpoints and record
  metrics/<dataset>/<backbone>/<variant>/fold<i>-shot<k>.json   evaluation records
  external/<name>/<dataset>/<backbone>/<variant>/fold<i>-shot<k>.json   records of checkpoints
                            made elsewhere (hdmnet evaluate --checkpoint FILE --name NAME)
  tables/ figures/ report/
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from hdmnet.config import Params

COCO_SPLITS = ("fwb", "panet")


@dataclass(frozen=True)
class Run:
    """One cell of the grid: a meta-learner run and its evaluation."""

    dataset: str
    backbone: str
    variant: str
    fold: int
    shot: int

    @property
    def name(self) -> str:
        return f"{self.dataset}-{self.backbone}-{self.variant}-fold{self.fold}-shot{self.shot}"


def data_dir(params: Params) -> Path:
    return Path(params.paths.data)


def results_dir(params: Params) -> Path:
    return Path(params.paths.results)


def synth_dir(params: Params) -> Path:
    return data_dir(params) / "synth"


def archive_dir(params: Params) -> Path:
    return data_dir(params) / "archives"


def raw_dir(params: Params) -> Path:
    return data_dir(params) / "raw"


def prepared_dir(params: Params, dataset: str) -> Path:
    return data_dir(params) / dataset


def split_folder(dataset: str, scheme: str, exclude_novel: bool) -> str:
    """Fold-list folder name: the fold scheme (one on PASCAL) and the exclusion rule."""
    name = "pascal5i" if dataset == "pascal" else scheme
    return name if exclude_novel else f"{name}-noexcl"


def split_name(params: Params, dataset: str) -> str:
    return split_folder(dataset, params.data.coco_split, params.data.exclude_novel)


def fold_dir(params: Params, dataset: str, fold: int) -> Path:
    return prepared_dir(params, dataset) / "folds" / split_name(params, dataset) / f"fold{fold}"


def base_dir(params: Params, dataset: str, backbone: str, fold: int) -> Path:
    return results_dir(params) / "base" / dataset / backbone / f"fold{fold}"


def base_checkpoint(params: Params, dataset: str, backbone: str, fold: int) -> Path:
    return base_dir(params, dataset, backbone, fold) / "best.pth"


def meta_dir(params: Params, run: Run) -> Path:
    return (
        results_dir(params)
        / "meta"
        / run.dataset
        / run.backbone
        / run.variant
        / f"fold{run.fold}"
        / f"shot{run.shot}"
    )


def meta_checkpoint(params: Params, run: Run) -> Path:
    """The checkpoint selected for testing (best validation or last, per meta.selection)."""
    name = "best.pth" if params.meta.selection == "best_val" else "last.pth"
    return meta_dir(params, run) / name


def metrics_file(params: Params, run: Run) -> Path:
    return (
        results_dir(params)
        / "metrics"
        / run.dataset
        / run.backbone
        / run.variant
        / f"fold{run.fold}-shot{run.shot}.json"
    )


def external_dir(params: Params) -> Path:
    return results_dir(params) / "external"


def external_metrics_file(params: Params, name: str, run: Run) -> Path:
    """The metrics record of an external checkpoint (``hdmnet evaluate --checkpoint``), kept
    apart from the pipeline's own records."""
    return (
        external_dir(params)
        / name
        / run.dataset
        / run.backbone
        / run.variant
        / f"fold{run.fold}-shot{run.shot}.json"
    )


def tables_dir(params: Params) -> Path:
    return results_dir(params) / "tables"


def figures_dir(params: Params) -> Path:
    return results_dir(params) / "figures"


def report_file(params: Params) -> Path:
    return results_dir(params) / "report" / "index.html"


def main_runs(params: Params) -> list[Run]:
    """The full model on the whole grid."""
    grid = params.grid
    return [
        Run(dataset, backbone, "full", fold, shot)
        for dataset in grid.datasets
        for backbone in grid.backbones
        for fold in grid.folds
        for shot in grid.shots
    ]


def ablation_runs(params: Params) -> list[Run]:
    """Each ablation variant on the ablation part of the grid, at the shots it acts at."""
    ab = params.ablation
    return [
        Run(dataset, backbone, variant, fold, shot)
        for variant, shot in ab.settings()
        for dataset in ab.datasets
        for backbone in ab.backbones
        for fold in ab.folds
    ]


def all_runs(params: Params) -> list[Run]:
    """Every meta-learner run, main grid first; ablation cells the main grid also has are shared
    only when the variant is the full model, so each run appears once."""
    seen: dict[Run, None] = {}
    for run in main_runs(params) + ablation_runs(params):
        seen.setdefault(run, None)
    return list(seen)


def base_learners(params: Params) -> list[tuple[str, str, int]]:
    """(dataset, backbone, fold) of every base learner the runs need."""
    seen: dict[tuple[str, str, int], None] = {}
    for run in all_runs(params):
        seen.setdefault((run.dataset, run.backbone, run.fold), None)
    return list(seen)
