"""Few-shot episodes and base-learner samples as torch Datasets.

Sampling (PROTOCOL.md): the query is a list item; the class is drawn uniformly among the item's
eligible classes; K distinct supports come from that class's file list, never the query itself.
Training gives one episode per list item per epoch (the DataLoader shuffles); evaluation walks
the list in order, cycling, for ``num_episodes`` episodes.

Every random choice of episode i comes from a generator seeded with (seed, mode, fold, epoch, i)
through ``np.random.SeedSequence``, never from global state, so an episode does not depend on the
number of DataLoader workers nor on which episodes were drawn before. The choice of query, class
and supports (the "recipe") and the augmentation use two separate streams, so ``episode_recipe``
gives the recipe without reading any file.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import cv2
import numpy as np
import torch
from torch.utils.data import Dataset

from hdmnet.data.errors import DataError
from hdmnet.data.folds import IGNORE, apply_label_map, base_label_map, num_classes
from hdmnet.data.lists import FoldLists, ListItem, load_fold_lists, lut_num_classes
from hdmnet.data.masks import read_image, read_mask

Transform = Callable[
    [np.ndarray, Sequence[np.ndarray], np.random.Generator],
    tuple[np.ndarray, list[np.ndarray]],
]
ANNOTATIONS = ("mask", "bbox")
_MODE_TAG = {"train": 1, "val": 2, "base": 3}
_RECIPE_STREAM, _AUGMENT_STREAM = 0, 1


class Recipe(NamedTuple):
    """What episode ``index`` is made of, before any file is read."""

    index: int
    query: ListItem
    class_id: int
    supports: tuple[ListItem, ...]


def binary_mask(mask: np.ndarray, class_id: int) -> np.ndarray:
    """1 where ``class_id``, 255 where ignore, 0 elsewhere (uint8)."""
    out = (mask == class_id).astype(np.uint8)
    out[mask == IGNORE] = IGNORE
    return out


def bbox_mask(mask: np.ndarray) -> np.ndarray:
    """Replace the foreground (1) of a binary mask by the filled boxes of its components.

    Components are 8-connected. Inside a box the label is 1; outside, 255 stays and the rest is 0.
    """
    foreground = (mask == 1).astype(np.uint8)
    count, _, stats, _ = cv2.connectedComponentsWithStats(foreground, connectivity=8)
    out = np.where(mask == IGNORE, IGNORE, 0).astype(np.uint8)
    for x, y, w, h, _area in stats[1:count]:
        out[y : y + h, x : x + w] = 1
    return out


def load_pair(root: Path, item: ListItem, classes: int) -> tuple[np.ndarray, np.ndarray]:
    image = read_image(root / item.image)
    mask = read_mask(root / item.mask, classes)
    if image.shape[:2] != mask.shape:
        raise DataError(
            f"image {root / item.image} is {image.shape[1]}x{image.shape[0]} but its mask "
            f"{root / item.mask} is {mask.shape[1]}x{mask.shape[0]}"
        )
    return image, mask


class PairCache:
    """Reads (image, mask) pairs with :func:`load_pair`, keeping decoded pairs in memory until
    ``budget_mb`` is used up (later pairs are read each time).

    A training epoch decodes every image again (a 5-shot episode six of them): on the embedded
    data, keeping them took a 5-shot meta-training epoch from 10.5 to 10.0 s on a CPU. Decoding
    is deterministic, so a kept pair is exactly what a new read would give; the kept arrays are
    read-only, so a transform that wrote into its input would fail instead of changing a later
    epoch's sample.
    """

    def __init__(self, root: Path, classes: int, budget_mb: int = 0) -> None:
        if budget_mb < 0:
            raise ValueError(f"cache budget must be >= 0 MB, got {budget_mb}")
        self.root = root
        self.classes = classes
        self.budget = budget_mb * 2**20
        self.used = 0
        self._kept: dict[ListItem, tuple[np.ndarray, np.ndarray]] = {}

    def __call__(self, item: ListItem) -> tuple[np.ndarray, np.ndarray]:
        kept = self._kept.get(item)
        if kept is not None:
            return kept
        pair = load_pair(self.root, item, self.classes)
        size = sum(array.nbytes for array in pair)
        if self.used + size <= self.budget:
            for array in pair:
                array.flags.writeable = False
            self._kept[item] = pair
            self.used += size
        return pair


def _rng(*key: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([int(k) for k in key]))


def collate(batch: list[dict[str, Any]]) -> dict[str, Any]:
    """Batch episode or base samples: equal-shape tensors are stacked, ints become a tensor,
    everything else (original-size ``label``s, names) stays a list."""
    out: dict[str, Any] = {}
    for key in batch[0]:
        values = [sample[key] for sample in batch]
        if all(isinstance(v, torch.Tensor) for v in values) and all(
            v.shape == values[0].shape for v in values
        ):
            out[key] = torch.stack(values)
        elif all(isinstance(v, int) and not isinstance(v, bool) for v in values):
            out[key] = torch.tensor(values, dtype=torch.long)
        else:
            out[key] = values
    return out


class EpisodeDataset(Dataset):
    """Episodes of one fold: query, query mask, base mask, K supports and their masks.

    ``lists`` is a ``FoldLists`` or a folder written by ``write_fold_lists``. ``mode`` 'train'
    draws classes among the fold's base classes, 'val' among its novel classes. ``num_episodes``
    defaults to one per list item; more cycle the list in order. Base masks are ``base_lut``
    (default: the fold's ``base_label_map``) applied on the fly.

    Raises ``DataError`` at construction if a class that episodes can draw has fewer than
    ``shot + 1`` images in the list (validation: every novel class must have them).
    ``cache_mb`` keeps decoded images for later epochs (:class:`PairCache`).
    """

    def __init__(
        self,
        root: str | os.PathLike[str],
        lists: FoldLists | str | os.PathLike[str],
        mode: str,
        shot: int,
        transform: Transform,
        num_episodes: int | None = None,
        seed: int = 0,
        annotation: str = "mask",
        base_lut: np.ndarray | None = None,
        cache_mb: int = 0,
    ) -> None:
        self.root = Path(root)
        self.lists = lists if isinstance(lists, FoldLists) else load_fold_lists(lists)
        self.split = self.lists.split(mode)
        self.mode = mode
        if isinstance(shot, bool) or not isinstance(shot, int) or shot < 1:
            raise ValueError(f"shot must be a positive integer, got {shot!r}")
        if annotation not in ANNOTATIONS:
            raise ValueError(f"annotation must be one of {ANNOTATIONS}, got {annotation!r}")
        if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
            raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
        if not self.split.items:
            raise DataError(f"{self.split.source} is empty")
        if num_episodes is not None and num_episodes < 1:
            raise ValueError(f"num_episodes must be positive, got {num_episodes}")
        self.shot = shot
        self.transform = transform
        self.num_episodes = len(self.split.items) if num_episodes is None else int(num_episodes)
        self.seed = seed
        self.annotation = annotation
        self.classes = self.lists.classes(mode)
        self.num_classes = num_classes(self.lists.dataset)
        self.base_lut = (
            base_label_map(self.lists.dataset, self.lists.fold, self.lists.scheme)
            if base_lut is None
            else np.asarray(base_lut, dtype=np.uint8)
        )
        self.epoch = 0
        self.pairs = PairCache(self.root, self.num_classes, cache_mb)
        self._check_class_sizes()

    def _check_class_sizes(self) -> None:
        for c in self.classes:
            n = len(self.split.class_items.get(c, ()))
            # A training class with no image is never drawn; an evaluation class must be scored.
            if n < self.shot + 1 and (n > 0 or self.mode == "val"):
                raise DataError(
                    f"class {c} has {n} image(s) in {self.split.source}; a {self.shot}-shot "
                    f"episode needs at least {self.shot + 1} (the query and {self.shot} "
                    f"distinct supports)"
                )

    def set_epoch(self, epoch: int) -> None:
        """Select the training epoch (call before creating the DataLoader iterator)."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return self.num_episodes

    def _key(self, index: int, stream: int) -> np.random.Generator:
        epoch = self.epoch if self.mode == "train" else 0
        return _rng(self.seed, _MODE_TAG[self.mode], self.lists.fold, epoch, index, stream)

    def episode_recipe(self, index: int) -> Recipe:
        """Query, class and supports of episode ``index`` (no file is read)."""
        if not 0 <= index < self.num_episodes:
            raise IndexError(f"episode {index} out of range 0..{self.num_episodes - 1}")
        q = index % len(self.split.items)
        rng = self._key(index, _RECIPE_STREAM)
        eligible = self.split.item_classes[q]
        class_id = eligible[int(rng.integers(len(eligible)))]
        members = self.split.class_items[class_id]
        # members is ascending and holds q: draw among the others, then skip over q's slot.
        slot = int(np.searchsorted(members, q))
        picks = rng.choice(len(members) - 1, size=self.shot, replace=False)
        picks = picks + (picks >= slot)
        supports = tuple(self.split.items[int(members[p])] for p in picks)
        return Recipe(index, self.split.items[q], int(class_id), supports)

    def __getitem__(self, index: int) -> dict[str, Any]:
        recipe = self.episode_recipe(index)
        rng = self._key(index, _AUGMENT_STREAM)
        c = recipe.class_id
        image, mask = self.pairs(recipe.query)
        label = binary_mask(mask, c)
        query, (query_mask, base_mask) = self.transform(
            image,
            [label, apply_label_map(mask, self.base_lut)],
            rng,
        )
        supports, support_masks = [], []
        for item in recipe.supports:
            s_image, s_mask = self.pairs(item)
            s_label = binary_mask(s_mask, c)
            if self.annotation == "bbox":
                s_label = bbox_mask(s_label)
            s_image, (s_label,) = self.transform(s_image, [s_label], rng)
            supports.append(torch.from_numpy(s_image))
            support_masks.append(torch.from_numpy(s_label.astype(np.int64)))
        sample: dict[str, Any] = {
            "query": torch.from_numpy(query),
            "query_mask": torch.from_numpy(query_mask.astype(np.int64)),
            "query_base_mask": torch.from_numpy(base_mask.astype(np.int64)),
            "supports": torch.stack(supports),
            "support_masks": torch.stack(support_masks),
            "class_id": c,
            "class_index": self.classes.index(c),
            "episode": index,
            "query_name": recipe.query.image,
            "support_names": [item.image for item in recipe.supports],
        }
        if self.mode == "val":
            sample["label"] = torch.from_numpy(label.astype(np.int64))
        return sample


class BaseDataset(Dataset):
    """Images with base annotations, for base-learner training and base-class validation.

    The base mask is ``lut`` applied to the mask on the fly. With ``keep_label`` the sample also
    holds the original-size base mask ``label``. ``cache_mb`` keeps decoded images for later
    epochs (:class:`PairCache`).
    """

    def __init__(
        self,
        root: str | os.PathLike[str],
        items: Sequence[ListItem],
        lut: np.ndarray,
        transform: Transform,
        seed: int = 0,
        keep_label: bool = False,
        cache_mb: int = 0,
    ) -> None:
        if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
            raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
        self.root = Path(root)
        self.items = list(items)
        self.lut = np.asarray(lut, dtype=np.uint8)
        self.num_classes = lut_num_classes(self.lut)
        self.transform = transform
        self.seed = seed
        self.keep_label = keep_label
        self.epoch = 0
        self.pairs = PairCache(self.root, self.num_classes, cache_mb)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> dict[str, Any]:
        if not 0 <= index < len(self.items):
            raise IndexError(f"sample {index} out of range 0..{len(self.items) - 1}")
        item = self.items[index]
        image, mask = self.pairs(item)
        base = apply_label_map(mask, self.lut)
        rng = _rng(self.seed, _MODE_TAG["base"], self.epoch, index)
        out_image, (out_mask,) = self.transform(image, [base], rng)
        sample: dict[str, Any] = {
            "image": torch.from_numpy(out_image),
            "mask": torch.from_numpy(out_mask.astype(np.int64)),
            "index": index,
            "name": item.image,
        }
        if self.keep_label:
            sample["label"] = torch.from_numpy(base.astype(np.int64))
        return sample
