"""A test episode as pictures: the arrays the report's qualitative grids and correlation maps
draw. Numpy only, so that the report renders without torch; ``hdmnet.evaluate.examples`` makes
them by running a model, ``hdmnet.report.figures`` draws them."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass
class EpisodeView:
    """One test episode as the qualitative figures draw it (arrays at the original size).

    ``correlations``: the matching module's correlation maps, coarse to fine (one per stage),
    any sizes; empty when not available.
    """

    query: np.ndarray  # H x W x 3 uint8 RGB
    label: np.ndarray  # H x W uint8: 0 background, 1 foreground, 255 ignored
    prediction: np.ndarray  # H x W uint8 0/1
    supports: list[np.ndarray]  # K x (h x w x 3 uint8)
    support_masks: list[np.ndarray]  # K x (h x w uint8 0/1/255)
    class_name: str
    correlations: list[np.ndarray] = field(default_factory=list)
    iou: float | None = None

    def check(self, where: str = "episode") -> None:
        """Raise ValueError naming the episode and the mismatching array."""
        if self.query.ndim != 3 or self.query.shape[2] != 3:
            raise ValueError(f"{where}: query must be HxWx3, got shape {self.query.shape}")
        size = self.query.shape[:2]
        for name, array in (("label", self.label), ("prediction", self.prediction)):
            if array.shape != size:
                raise ValueError(f"{where}: {name} shape {array.shape} != query size {size}")
        if len(self.supports) != len(self.support_masks):
            raise ValueError(
                f"{where}: {len(self.supports)} supports but {len(self.support_masks)} masks"
            )
        for i, (image, mask) in enumerate(zip(self.supports, self.support_masks, strict=True)):
            if image.ndim != 3 or mask.shape != image.shape[:2]:
                raise ValueError(
                    f"{where}: support {i} image {image.shape} and mask {mask.shape} disagree"
                )
