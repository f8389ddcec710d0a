"""The paper's published numbers as data (../shared/spec/PAPER.md), for comparison tables.

mIoU and FB-IoU are percentages, folds 0..3 then the mean over the four folds. COCO-20i numbers
use the FWB fold split. These numbers are for the real PASCAL-5i and COCO-20i; they are never
compared with runs on the embedded (generated) data set, and outputs of such runs never call
their data by the real benchmark's name.
"""

from __future__ import annotations

from dataclasses import dataclass

from hdmnet.config import Params

DATASET_NAMES = {"pascal": "PASCAL-5i", "coco": "COCO-20i"}
EMBEDDED_NAMES = {"pascal": "embedded PASCAL-like", "coco": "embedded COCO-like"}
BACKBONE_NAMES = {
    "resnet50": "ResNet-50",
    "resnet101": "ResNet-101",
    "vgg16": "VGG-16",
    "small": "small",
}
FOLDS = (0, 1, 2, 3)
SOURCE = "HDMNet, Peng et al., CVPR 2023"


@dataclass(frozen=True)
class PaperResult:
    """One row of a published table: mIoU per fold (0..3), their mean and FB-IoU if given."""

    dataset: str
    backbone: str
    shot: int
    folds: tuple[float, float, float, float]
    mean: float
    fbiou: float | None = None
    note: str = ""


def _row(
    dataset: str, backbone: str, shot: int, values: str, fbiou: float | None = None, note: str = ""
) -> PaperResult:
    f0, f1, f2, f3, mean = (float(v) for v in values.split())
    return PaperResult(dataset, backbone, shot, (f0, f1, f2, f3), mean, fbiou, note)


#: The main table of the paper: (dataset, backbone, shot) -> result of the full model.
MAIN: dict[tuple[str, str, int], PaperResult] = {
    (r.dataset, r.backbone, r.shot): r
    for r in (
        _row("pascal", "resnet50", 1, "71.0 75.4 68.9 62.1 69.4"),
        _row("pascal", "resnet50", 5, "71.3 76.2 71.3 68.5 71.8"),
        _row("pascal", "vgg16", 1, "64.8 71.4 67.7 56.4 65.1"),
        _row("pascal", "vgg16", 5, "68.1 73.1 71.8 64.0 69.3"),
        _row("coco", "resnet50", 1, "43.8 55.3 51.6 49.4 50.0", fbiou=72.2),
        _row("coco", "resnet50", 5, "50.6 61.6 55.7 56.0 56.0", fbiou=77.7),
        _row("coco", "vgg16", 1, "40.7 50.6 48.2 44.0 45.9"),
        _row("coco", "vgg16", 5, "47.0 56.5 54.1 51.9 52.4"),
    )
}

#: Published numbers of ablation variants: (variant, dataset, backbone, shot) -> result.
#: Only the ensemble ablation has per-fold numbers (the authors' statement, meta output only).
VARIANTS: dict[tuple[str, str, str, int], PaperResult] = {
    ("no_ensemble", "coco", "resnet50", 1): _row(
        "coco",
        "resnet50",
        1,
        "43.7 53.1 49.6 48.3 48.7",
        note="without the base-learner ensemble (meta output only), authors' statement",
    ),
}


@dataclass(frozen=True)
class Baseline:
    """A method often shown beside HDMNet: mean mIoU over the four folds, ResNet-50."""

    method: str
    dataset: str
    shot1: float
    shot5: float


BASELINES: tuple[Baseline, ...] = (
    Baseline("BAM", "pascal", 67.8, 70.9),
    Baseline("PFENet", "pascal", 60.8, 61.9),
    Baseline("CyCTR", "pascal", 64.2, 65.6),
    Baseline("BAM", "coco", 46.2, 51.2),
    Baseline("HSNet", "coco", 41.2, 49.5),
    Baseline("PFENet", "coco", 35.8, 39.0),
)

#: Published base-learner (PSPNet, ResNet-50) mIoU on the base classes, folds 0..3.
BASE_LEARNER: dict[tuple[str, str], tuple[float, float, float, float]] = {
    ("pascal", "resnet50"): (71.4, 69.2, 69.2, 73.7),
    ("coco", "resnet50"): (50.8, 49.4, 52.0, 50.9),
}


def paper_result(
    dataset: str, backbone: str, shot: int, variant: str = "full"
) -> PaperResult | None:
    """The published result of a cell, or None when the paper has no such number."""
    if variant == "full":
        return MAIN.get((dataset, backbone, shot))
    return VARIANTS.get((variant, dataset, backbone, shot))


def compare_with_paper(params: Params) -> bool:
    """The paper's numbers are for the real data sets: compare only runs on official data."""
    return params.data.source == "official"


def dataset_name(dataset: str, embedded: bool = False) -> str:
    """The benchmark's name (PASCAL-5i), or the generated stand-in's (embedded PASCAL-like)."""
    return (EMBEDDED_NAMES if embedded else DATASET_NAMES).get(dataset, dataset)


def data_name(params: Params, dataset: str) -> str:
    """The name of ``dataset`` as the runs of ``params`` have it (real or embedded)."""
    return dataset_name(dataset, embedded=not compare_with_paper(params))


def backbone_name(backbone: str) -> str:
    return BACKBONE_NAMES.get(backbone, backbone)
