"""The episodic test protocol, with feature reuse.

The backbone is frozen and evaluation transforms are deterministic, so the features of a query
image, and of a (support image, class) pair, are the same in every episode and every seed that
uses them. ``FeatureCache`` keeps them within a memory budget; episodes are then decoded in
batches from cached features. With ``cache_mb=0`` every episode encodes its images afresh (the
straightforward method, kept for the benchmark and as a check: both give identical metrics).

Episodes are drawn by ``EpisodeDataset.episode_recipe`` (a pure function of fold, seed and
index), predictions are upsampled to the original label size and scored there (PROTOCOL.md).
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from hdmnet.data.episodes import EpisodeDataset, Recipe, bbox_mask, binary_mask, load_pair
from hdmnet.data.folds import apply_label_map, base_label_map
from hdmnet.data.lists import ListItem
from hdmnet.data.transforms import EvalTransform
from hdmnet.evaluate.metrics import (
    FewShotMeter,
    SemanticMeter,
    binary_prediction,
    upsample_to_label,
)
from hdmnet.model import Features, HDMNet
from hdmnet.progress import progress

OUTPUTS = ("final", "meta")


class FeatureCache:
    """Least-recently-used store of encoded features, bounded in bytes (0 = store nothing)."""

    def __init__(self, budget_bytes: int) -> None:
        self.budget = budget_bytes
        self.entries: OrderedDict[Hashable, tuple[object, int]] = OrderedDict()
        self.used = 0
        self.hits = 0
        self.misses = 0
        self.evictions = 0

    def get(self, key: Hashable, compute: Callable[[], tuple[object, int]]) -> object:
        if key in self.entries:
            self.entries.move_to_end(key)
            self.hits += 1
            return self.entries[key][0]
        self.misses += 1
        value, size = compute()
        if size <= self.budget:
            self.entries[key] = (value, size)
            self.used += size
            while self.used > self.budget:
                _, (_, old) = self.entries.popitem(last=False)
                self.used -= old
                self.evictions += 1
        return value

    def stats(self) -> dict[str, int]:
        return {
            "hits": self.hits,
            "misses": self.misses,
            "evictions": self.evictions,
            "bytes": self.used,
        }


@dataclass
class EncodedQuery:
    name: str
    features: Features
    mask: np.ndarray  # original-size class mask of the query image


@dataclass
class EncodedSupport:
    features: Features
    mask: torch.Tensor  # [S, S] resized 0/1/255 support label


@dataclass
class Decoded:
    """One decoded episode: logits per output at the original label size, the 0/1/255 label,
    the query, and the correlation maps of the matching layers (coarse to fine)."""

    recipe: Recipe
    class_index: int
    logits: dict[str, torch.Tensor]
    label: np.ndarray
    query: EncodedQuery
    correlations: list[torch.Tensor]


@dataclass
class ProtocolResult:
    """Per seed and output, the accumulated few-shot meter; plus the base learner's meter."""

    meters: dict[int, dict[str, FewShotMeter]]
    classes: tuple[int, ...]  # the classes the meters index, in order
    base: SemanticMeter | None
    episodes: int
    seconds: float
    cache: dict[str, int] = field(default_factory=dict)


class EpisodeRunner:
    """Encodes and decodes evaluation episodes of one fold with a trained HDMNet."""

    def __init__(
        self,
        model: HDMNet,
        root: Path,
        fold_dir: Path,
        shot: int,
        image_size: int,
        annotation: str = "mask",
        cache_mb: int = 1024,
        batch_size: int = 16,
        device: torch.device | None = None,
    ) -> None:
        self.model = model.eval()
        self.root = Path(root)
        self.fold_dir = Path(fold_dir)
        self.shot = shot
        self.transform = EvalTransform(image_size)
        self.annotation = annotation
        self.cache = FeatureCache(cache_mb * 2**20)
        self.batch_size = batch_size
        self.device = device or torch.device("cpu")

    def dataset(self, seed: int, episodes: int) -> EpisodeDataset:
        return EpisodeDataset(
            self.root,
            self.fold_dir,
            "val",
            self.shot,
            self.transform,
            num_episodes=episodes,
            seed=seed,
            annotation=self.annotation,
        )

    def _query(self, item: ListItem, classes: int) -> EncodedQuery:
        def compute() -> tuple[EncodedQuery, int]:
            image, mask = load_pair(self.root, item, classes)
            tensor, _ = self.transform(image, [])
            with torch.inference_mode():
                feats = self.model.encode_query(torch.from_numpy(tensor)[None].to(self.device))
            return EncodedQuery(item.image, feats, mask), feats.nbytes + mask.nbytes

        return self.cache.get(("query", item.image), compute)  # type: ignore[return-value]

    def _support(self, item: ListItem, class_id: int, classes: int) -> EncodedSupport:
        def compute() -> tuple[EncodedSupport, int]:
            image, mask = load_pair(self.root, item, classes)
            label = binary_mask(mask, class_id)
            if self.annotation == "bbox":
                label = bbox_mask(label)
            tensor, (resized,) = self.transform(image, [label])
            mask_t = torch.from_numpy(resized.astype(np.int64)).to(self.device)
            with torch.inference_mode():
                feats = self.model.encode_support(
                    torch.from_numpy(tensor)[None].to(self.device), mask_t[None]
                )
            return EncodedSupport(feats, mask_t), feats.nbytes + mask_t.nbytes

        key = ("support", item.image, class_id, self.annotation)
        return self.cache.get(key, compute)  # type: ignore[return-value]

    def decode_batch(self, dataset: EpisodeDataset, indices: Sequence[int]) -> list[Decoded]:
        """Decode episodes ``indices`` together from (cached) features."""
        recipes = [dataset.episode_recipe(i) for i in indices]
        classes = dataset.num_classes
        queries = [self._query(r.query, classes) for r in recipes]
        supports = [[self._support(s, r.class_id, classes) for s in r.supports] for r in recipes]
        query_feats = _cat([q.features for q in queries])
        support_feats = [_cat([s[k].features for s in supports]) for k in range(self.shot)]
        support_masks = torch.stack([torch.stack([s.mask for s in row]) for row in supports])
        out = self.model.decode(query_feats, support_feats, support_masks)
        results = []
        for b, (recipe, query) in enumerate(zip(recipes, queries, strict=True)):
            label = binary_mask(query.mask, recipe.class_id)
            logits = {
                "final": upsample_to_label(out.final[b : b + 1], label.shape)[0],
                "meta": upsample_to_label(out.meta[b : b + 1], label.shape)[0],
            }
            results.append(
                Decoded(
                    recipe=recipe,
                    class_index=dataset.classes.index(recipe.class_id),
                    logits=logits,
                    label=label,
                    query=query,
                    correlations=[c[b] for c in out.correlations],
                )
            )
        return results

    def run(
        self,
        seeds: Sequence[int],
        episodes: int,
        rank: int = 0,
        world_size: int = 1,
        base_classes: tuple[str, int, str] | None = None,
        desc: str = "evaluate",
    ) -> ProtocolResult:
        """Every seed's episodes (this process's share ``rank::world_size``).

        With ``base_classes`` = (dataset, fold, scheme), the base learner's semantic
        segmentation of the base classes is also scored once on every distinct query image.
        """
        start = time.perf_counter()
        self.model.eval()
        datasets = {seed: self.dataset(seed, episodes) for seed in seeds}
        meters = {
            seed: {name: FewShotMeter(len(ds.classes)) for name in OUTPUTS}
            for seed, ds in datasets.items()
        }
        lut = None if base_classes is None else base_label_map(*base_classes)
        base_meter = None if lut is None else SemanticMeter(int(lut[lut != 255].max()) + 1)
        scored: set[str] = set()
        mine = list(range(rank, episodes, world_size))
        work = [
            (seed, mine[i : i + self.batch_size])
            for seed in seeds
            for i in range(0, len(mine), self.batch_size)
        ]
        bar = progress(work, desc=desc)
        for seed, chunk in bar:
            seed_meters = meters[seed]
            for episode in self.decode_batch(datasets[seed], chunk):
                label_t = torch.from_numpy(episode.label.astype(np.int64))
                for name in OUTPUTS:
                    prediction = binary_prediction(episode.logits[name])
                    seed_meters[name].update(episode.class_index, prediction, label_t)
                if base_meter is not None and episode.query.name not in scored:
                    scored.add(episode.query.name)
                    self._score_base(episode.query, base_meter, lut)
            bar.set(miou=100 * seed_meters["final"].miou())
        return ProtocolResult(
            meters=meters,
            classes=tuple(datasets[seeds[0]].classes),
            base=base_meter,
            episodes=episodes,
            seconds=time.perf_counter() - start,
            cache=self.cache.stats(),
        )

    def _score_base(self, query: EncodedQuery, meter: SemanticMeter, lut: np.ndarray) -> None:
        with torch.inference_mode():
            logits = self.model.base_learnear(query.features.feat5)
        logits = upsample_to_label(logits, query.mask.shape)
        meter.update(logits[0].argmax(0).cpu(), torch.from_numpy(apply_label_map(query.mask, lut)))


def _cat(features: Sequence[Features]) -> Features:
    first = features[0]
    return Features(
        torch.cat([f.layer2 for f in features]),
        torch.cat([f.layer3 for f in features]),
        torch.cat([f.layer4 for f in features]),
        torch.cat([f.feat5 for f in features]),
        first.image_size,
    )
