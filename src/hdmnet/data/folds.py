"""Fold splits of PASCAL-5i and COCO-20i, and the base-class relabelling table of a fold.

Class ids are the data set's own (PASCAL 1..20 in VOC order, COCO 1..80 in ascending category id
order); 0 is background and 255 ignore in every mask.
"""

from __future__ import annotations

import numpy as np

DATASETS: dict[str, int] = {"pascal": 20, "coco": 80}
SCHEMES = ("fwb", "panet")
NUM_FOLDS = 4
IGNORE = 255


def num_classes(dataset: str) -> int:
    """Number of foreground classes of ``dataset`` ('pascal' -> 20, 'coco' -> 80)."""
    try:
        return DATASETS[dataset]
    except KeyError:
        raise ValueError(
            f"unknown dataset {dataset!r}; expected one of {sorted(DATASETS)}"
        ) from None


def fold_classes(dataset: str, fold: int, scheme: str = "fwb") -> tuple[list[int], list[int]]:
    """(base, novel) class ids of ``fold``, each ascending.

    PASCAL-5i: fold i holds out 5i+1..5i+5 (one split; ``scheme`` is validated but the two
    schemes only differ on COCO). COCO-20i: 'fwb' holds out {4k+i+1 : k=0..19}, 'panet' holds
    out 20i+1..20i+20.
    """
    total = num_classes(dataset)
    if scheme not in SCHEMES:
        raise ValueError(f"unknown fold scheme {scheme!r}; expected one of {list(SCHEMES)}")
    if (
        isinstance(fold, bool)
        or not isinstance(fold, int | np.integer)
        or not 0 <= fold < NUM_FOLDS
    ):
        raise ValueError(f"fold must be an integer in 0..{NUM_FOLDS - 1}, got {fold!r}")
    fold = int(fold)
    per_fold = total // NUM_FOLDS
    if dataset == "coco" and scheme == "fwb":
        novel = [NUM_FOLDS * k + fold + 1 for k in range(per_fold)]
    else:
        novel = list(range(per_fold * fold + 1, per_fold * (fold + 1) + 1))
    held_out = set(novel)
    base = [c for c in range(1, total + 1) if c not in held_out]
    return base, novel


def base_label_map(dataset: str, fold: int, scheme: str = "fwb") -> np.ndarray:
    """256-entry uint8 lookup table giving a mask its base annotation for ``fold``.

    Base class -> 1.. in base-list order, novel -> 0, background 0 -> 0, ignore 255 -> 255.
    Ids that no valid mask contains also map to 255; masks are validated when read, so they
    never reach the table.
    """
    base, novel = fold_classes(dataset, fold, scheme)
    lut = np.full(256, IGNORE, dtype=np.uint8)
    lut[0] = 0
    lut[np.asarray(novel)] = 0
    lut[np.asarray(base)] = np.arange(1, len(base) + 1, dtype=np.uint8)
    return lut


def apply_label_map(mask: np.ndarray, lut: np.ndarray) -> np.ndarray:
    """Relabel a uint8 mask through a 256-entry table (one vectorised gather)."""
    if mask.dtype != np.uint8:
        raise ValueError(f"mask must be uint8 to use a label table, got {mask.dtype}")
    if lut.shape != (256,) or lut.dtype != np.uint8:
        raise ValueError(f"label table must be uint8 of shape (256,), got {lut.dtype} {lut.shape}")
    return lut[mask]
