"""Where every artefact lives. The CLI, the Snakefile, dvc.yaml and the tests all use these paths.

data/                       inputs (never committed)
  synth/                    generated archives + manifest.json (default preset)
  archives/                 downloaded and verified archives
  raw/{pascal,coco}/        extracted archives
  {pascal,coco}/            prepared images, masks, full lists, pixel counts
  {pascal,coco}/folds/<split>/fold<i>/  fold lists (train/val, per-class lists, summary)
results/
  base/<dataset>/<backbone>/fold<i>/seed<s>/    base learner (PSPNet) checkpoints and record
  meta/<dataset>/<backbone>/<variant>/fold<i>/shot<k>/seed<s>/   HDMNet checkpoints and record
  metrics/<dataset>/<backbone>/<variant>/fold<i>-shot<k>-seed<s>.json   evaluation records
  external/<name>/<dataset>/<backbone>/<variant>/fold<i>-shot<k>.json   records of checkpoints
                            made elsewhere (hdmnet evaluate --checkpoint FILE --name NAME)
  tables/ figures/ report/

``<s>`` is the training seed (``grid.train_seeds``): every learner is trained once per seed.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from hdmnet.config import Params

COCO_SPLITS = ("fwb", "panet")


@dataclass(frozen=True)
class BaseRun:
    """One base learner: a dataset, backbone, fold and training seed."""

    dataset: str
    backbone: str
    fold: int
    seed: int

    @property
    def name(self) -> str:
        return f"base-{self.dataset}-{self.backbone}-fold{self.fold}-seed{self.seed}"

    def fields(self) -> dict[str, str | int]:
        """The coordinates as records and tracking tags name them."""
        cell = {"dataset": self.dataset, "backbone": self.backbone, "fold": self.fold}
        return {**cell, "train_seed": self.seed}


@dataclass(frozen=True)
class Run:
    """One cell of the grid: a meta-learner run and its evaluation. ``seed`` is the training
    seed (None for a checkpoint trained elsewhere)."""

    dataset: str
    backbone: str
    variant: str
    fold: int
    shot: int
    seed: int | None

    @property
    def name(self) -> str:
        seed = "" if self.seed is None else f"-seed{self.seed}"
        cell = f"{self.dataset}-{self.backbone}-{self.variant}-fold{self.fold}-shot{self.shot}"
        return cell + seed

    def fields(self) -> dict[str, str | int | None]:
        """The coordinates as records and tracking tags name them."""
        cell = {"dataset": self.dataset, "backbone": self.backbone, "variant": self.variant}
        return {**cell, "fold": self.fold, "shot": self.shot, "train_seed": self.seed}

    @property
    def base(self) -> BaseRun:
        """The base learner this run's meta learner starts from."""
        if self.seed is None:
            raise ValueError(f"{self.name}: a run without a training seed has no base learner")
        return BaseRun(self.dataset, self.backbone, self.fold, self.seed)


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


def schemes(dataset: str) -> tuple[str, ...]:
    """The fold schemes of ``dataset``: PASCAL-5i has one split (its scheme name is only a label
    for the fold functions); COCO-20i has two, and ``data.coco_split`` picks one."""
    return COCO_SPLITS if dataset == "coco" else ("fwb",)


def scheme(params: Params, dataset: str) -> str:
    """The fold scheme ``dataset`` uses under ``params``."""
    options = schemes(dataset)
    return params.data.coco_split if len(options) > 1 else options[0]


def split_folder(dataset: str, scheme: str, exclude_novel: bool) -> str:
    """Fold-list folder name: the fold scheme (one on PASCAL) and the exclusion rule."""
    name = "pascal5i" if dataset == "pascal" else scheme
    return name if exclude_novel else f"{name}-noexcl"


def split_name(params: Params, dataset: str, exclude_novel: bool | None = None) -> str:
    """The fold-list folder ``params`` select (``exclude_novel``: that rule instead of
    ``data.exclude_novel``)."""
    exclude = params.data.exclude_novel if exclude_novel is None else exclude_novel
    return split_folder(dataset, params.data.coco_split, exclude)


def fold_dir(params: Params, dataset: str, fold: int, exclude_novel: bool | None = None) -> Path:
    split = split_name(params, dataset, exclude_novel)
    return prepared_dir(params, dataset) / "folds" / split / f"fold{fold}"


def base_dir(params: Params, base: BaseRun) -> Path:
    return (
        results_dir(params)
        / "base"
        / base.dataset
        / base.backbone
        / f"fold{base.fold}"
        / f"seed{base.seed}"
    )


def base_checkpoint(params: Params, base: BaseRun) -> Path:
    return base_dir(params, base) / "best.pth"


def meta_dir(params: Params, run: Run) -> Path:
    return (
        results_dir(params)
        / "meta"
        / run.dataset
        / run.backbone
        / run.variant
        / f"fold{run.fold}"
        / f"shot{run.shot}"
        / f"seed{run.seed}"
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
        / f"fold{run.fold}-shot{run.shot}-seed{run.seed}.json"
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
    """The full model on the whole grid, once per training seed."""
    grid = params.grid
    return [
        Run(dataset, backbone, "full", fold, shot, seed)
        for dataset in grid.datasets
        for backbone in grid.backbones
        for fold in grid.folds
        for shot in grid.shots
        for seed in grid.train_seeds
    ]


def ablation_runs(params: Params) -> list[Run]:
    """Each ablation variant on the ablation part of the grid, at the shots it acts at, once per
    training seed."""
    ab = params.ablation
    return [
        Run(dataset, backbone, variant, fold, shot, seed)
        for variant, shot in ab.settings()
        for dataset in ab.datasets
        for backbone in ab.backbones
        for fold in ab.folds
        for seed in params.grid.train_seeds
    ]


def all_runs(params: Params) -> list[Run]:
    """Every meta-learner run, main grid first; ablation cells the main grid also has are shared
    only when the variant is the full model, so each run appears once."""
    seen: dict[Run, None] = {}
    for run in main_runs(params) + ablation_runs(params):
        seen.setdefault(run, None)
    return list(seen)


def base_learners(params: Params) -> list[BaseRun]:
    """Every base learner the runs need."""
    return list(dict.fromkeys(run.base for run in all_runs(params)))
