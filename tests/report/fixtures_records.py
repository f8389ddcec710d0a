"""Hand-made records and episodes for the report tests: a small grid of metrics and training
records whose numbers follow a formula, so that every table value can be checked by hand."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from hdmnet import identity, layout
from hdmnet.config import Params, load_params
from hdmnet.data.classes import VOC_CLASSES
from hdmnet.evaluate.views import EpisodeView
from hdmnet.layout import Run
from hdmnet.records import BASE_KIND, METRICS_KIND, TRAIN_KIND, write_record

SEEDS = [510, 365, 382]
# Variants get a fixed offset from the full model, so deltas are known in advance.
VARIANT_OFFSET = {
    "full": 0.0,
    "no_distill": -2.0,
    "dot_attention": -1.5,
    "stages_1": -3.0,
    "stages_2": -1.0,
    "no_ensemble": -0.5,
    "no_exclusion": 0.25,
    "fixed_quirks": 0.75,
}


# Training seeds other than the first move every number of a training (the full model's by
# TRAIN_SEED_OFFSET, a variant's by that plus VARIANT_SEED_JITTER), so that the spread over
# training seeds and of the paired deltas is known in advance; seed 321 adds nothing.
TRAIN_SEED_OFFSET = {321: 0.0, 322: 2.0, 323: -1.0}
VARIANT_SEED_JITTER = {321: 0.0, 322: 0.6, 323: -0.3}


def seed_offset(run: Run) -> float:
    jitter = 0.0 if run.variant == "full" else VARIANT_SEED_JITTER.get(run.seed, 0.0)
    return TRAIN_SEED_OFFSET.get(run.seed, 0.0) + jitter


def expected_miou(run: Run) -> float:
    """The final mIoU the fixture writes for ``run``."""
    return 40.0 + 5.0 * run.fold + 2.0 * run.shot + VARIANT_OFFSET[run.variant] + seed_offset(run)


def expected_fbiou(run: Run) -> float:
    return 70.0 + run.fold + 0.5 * run.shot + VARIANT_OFFSET[run.variant] + seed_offset(run)


def class_ids(dataset: str, fold: int) -> list[int]:
    per_fold = 5 if dataset == "pascal" else 20
    return list(range(fold * per_fold + 1, (fold + 1) * per_fold + 1))


def metrics_record(run: Run, selection: str = "best_val") -> dict:
    miou, fbiou = expected_miou(run), expected_fbiou(run)
    classes = class_ids(run.dataset, run.fold)
    names = [VOC_CLASSES[c - 1] if run.dataset == "pascal" else f"coco{c}" for c in classes]

    def output(shift: float) -> dict:
        m = miou + shift
        return {
            "miou": m,
            "miou_std": 1.0,
            "fbiou": fbiou + shift,
            "fbiou_std": 0.5,
            # Seeds at -1, 0, +1 around the mean.
            "per_seed": [
                {"seed": s, "miou": m + d, "fbiou": fbiou + d}
                for s, d in zip(SEEDS, (-1.0, 0.0, 1.0), strict=True)
            ],
            "class_iou": {str(c): m + (i - 2) for i, c in enumerate(classes)},
        }

    return {
        "kind": METRICS_KIND,
        "dataset": run.dataset,
        "backbone": run.backbone,
        "variant": run.variant,
        "fold": run.fold,
        "shot": run.shot,
        "train_seed": run.seed,
        "preset": "test",
        "split": "pascal5i" if run.dataset == "pascal" else "fwb",
        "miou": miou,
        "fbiou": fbiou,
        "outputs": {"final": output(0.0), "meta": output(-3.0), "base": output(-20.0)},
        "classes": classes,
        "class_names": names,
        "seeds": SEEDS,
        "episodes_per_seed": 300,
        "annotation": "mask",
        "checkpoint": {
            "path": f"results/meta/{run.name}/best.pth",
            "sha256": f"{run.fold}{run.shot}" + "ab" * 31,
            "selection": selection,
            "epoch": 4,
        },
        "config": {"model": {"stages": 3}},
        "config_digest": "c0ffee123456",
        "data_hash": "da7a00000001",
        "git": {"git_commit": "1234567890abcdef1234567890abcdef12345678", "git_dirty": False},
        "hardware": {"hostname": "testhost", "device": "cpu"},
        "timing": {"seconds": 12.5, "ms_per_episode": 4.2, "cache": {}},
        "mlflow_run_id": None,
    }


def train_record(kind: str, run_like: dict, epochs: int = 5) -> dict:
    rows = [
        {"epoch": e, "loss": 1.0 / (e + 1), "lr": 0.001, "val_miou": 30.0 + 3 * e, "seconds": 2.0}
        for e in range(epochs)
    ]
    return {
        "kind": kind,
        **run_like,
        "epochs": rows,
        "best_epoch": epochs - 1,
        "best_val_miou": rows[-1]["val_miou"],
        "selection": "best_val",
        "global_batch": 8,
        "world_size": 1,
        "per_process_batch": 8,
        "checkpoints": {
            "best": {"path": "best.pth", "sha256": "be57" * 16},
            "last": {"path": "last.pth", "sha256": "1a57" * 16},
        },
        "config": {},
        "config_digest": "c0ffee123456",
        "git": {"git_commit": "1234567890abcdef", "git_dirty": False},
        "hardware": {},
        "seconds": 90.0,
        "mlflow_run_id": None,
    }


def write_metrics(params: Params, run: Run, selection: str = "best_val") -> None:
    """The metrics record of ``run`` in its place, with the identity the parameters give its
    cell, as the pipeline's own records have it (the tables refuse any other)."""
    record = {**metrics_record(run, selection), "config_digest": identity.evaluation(params, run)}
    write_record(layout.metrics_file(params, run), record)


def write_grid(params: Params, selection: str = "best_val", training: bool = True) -> list[Run]:
    """Metrics records for every run of the grid, and training records when asked."""
    runs = layout.all_runs(params)
    for run in runs:
        write_metrics(params, run, selection)
        if training:
            ident = {
                "dataset": run.dataset,
                "backbone": run.backbone,
                "fold": run.fold,
                "shot": run.shot,
                "variant": run.variant,
                "train_seed": run.seed,
            }
            path = layout.meta_dir(params, run) / "record.json"
            record = train_record(TRAIN_KIND, ident)
            write_record(path, {**record, "config_digest": identity.meta_learner(params, run)})
    if training:
        for base in layout.base_learners(params):
            ident = {"dataset": base.dataset, "backbone": base.backbone, "fold": base.fold}
            path = layout.base_dir(params, base) / "record.json"
            record = train_record(BASE_KIND, {**ident, "train_seed": base.seed}, epochs=4)
            write_record(path, {**record, "config_digest": identity.base_learner(params, base)})
    return runs


def default_params(root: Path, tmp: Path, *overrides: str) -> Params:
    return load_params(root / "params.yaml", [f"paths.results={tmp / 'results'}", *overrides])


def paper_params(root: Path, tmp: Path, *overrides: str) -> Params:
    """The paper preset cut down to COCO / ResNet-50 / 1-shot (the cells with FB-IoU); no
    K-shot ablation (it would add 5-shot cells)."""
    return load_params(
        root / "presets" / "paper.yaml",
        [
            f"paths.results={tmp / 'results'}",
            "grid.datasets=[coco]",
            "grid.backbones=[resnet50]",
            "grid.shots=[1]",
            "ablation.variants=[no_ensemble, stages_1]",
            "ablation.kshot_variants=[]",
            *overrides,
        ],
    )


def episode(shots: int, size: tuple[int, int] = (40, 56), seed: int = 0) -> EpisodeView:
    """A small synthetic episode: a bright square on noise, the prediction a shifted square."""
    rng = np.random.default_rng(seed)
    h, w = size

    def image() -> np.ndarray:
        return rng.integers(0, 255, size=(h, w, 3), dtype=np.uint8)

    def mask(shift: int = 0) -> np.ndarray:
        m = np.zeros((h, w), dtype=np.uint8)
        m[10 + shift : 30 + shift, 15:40] = 1
        m[0, :] = 255
        return m

    return EpisodeView(
        query=image(),
        label=mask(),
        prediction=(mask(3) == 1).astype(np.uint8),
        supports=[image() for _ in range(shots)],
        support_masks=[mask() for _ in range(shots)],
        class_name=f"class{seed}",
        correlations=[rng.random((4, 4)), rng.random((8, 8)), rng.random((16, 16))],
        iou=61.5,
    )
