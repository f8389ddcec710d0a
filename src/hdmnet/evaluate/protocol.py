"""The episodic test protocol, planned so that every image is encoded once.

Episodes are pure functions of (fold, seed, index) (``EpisodeDataset.episode_recipe``), the
model is fixed during evaluation and the evaluation transform is deterministic. So the work of
all seeds can be planned before any image is read:

1. Plan: the recipes of every episode of every seed (this process's share of the indices).
2. Order: class by class, and within a class query image by query image (all seeds of a query
   together). A support (image, class) is then used only within its class's stretch, and a
   query's episodes are adjacent.
3. Encode on demand, keep within a budget: an image goes through the backbone and is reduced at
   once to its code (:class:`~hdmnet.model.SupportCode` for a (support image, class) pair, about
   2-25 MB at 473 px with ResNet-50 instead of 59 MB of features; :class:`~hdmnet.model.QueryCode`
   for a query). Codes are kept between batches in a :class:`CodeStore` of ``cache_mb``, which
   knows every future use and, when full, drops the code needed farthest in the future
   (Belady's rule, optimal for a known sequence); a code nobody needs again is freed at once.
4. Decode in batches of ``batch_size`` episodes from the codes (a last, partial batch is padded
   with copies of its last episode, so every batch has the same shape).

Backbone passes per episode (``timing.cache.passes_per_episode`` in the record) measure the
reuse; the straightforward protocol needs 1 + K. ``benchmarks/evaluate.py`` measures both on a
PASCAL-sized fold.

``cache_mb=0`` is the straightforward protocol, kept as the reference: seeds one after the other,
episodes in index order, every episode encoding its query and supports afresh. Every image is
encoded alone and every batch decoded at the same shape, so an episode's numbers do not depend
on the order nor on the other episodes of its batch: both give identical metrics (integer
counts, tested). Decoding one episode at a time (``batch_size=1``) runs other kernel shapes,
whose rounding may flip a pixel now and then (within 0.05 mIoU, tested).

Predictions are upsampled to the original label size and scored there (PROTOCOL.md).
"""

from __future__ import annotations

import bisect
import time
from collections import Counter
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

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
    class_prediction,
    upsample_to_label,
)
from hdmnet.model import HDMNet
from hdmnet.model.hdmnet import QueryCode, SupportCode
from hdmnet.progress import progress

OUTPUTS = ("final", "meta")


class CodeStore:
    """Codes kept between batches within ``budget`` bytes, for a known sequence of batches.

    ``uses[key]`` lists (ascending) the batches that need ``key``. After batch ``now``,
    :meth:`keep` offers the codes it used; :meth:`settle` frees those with no later use and, while
    over budget, evicts the one whose next use is farthest away (it may be the one just offered,
    which is then simply not kept). Budget 0 keeps nothing. Keys are tuples whose first item is
    their kind (``query``, ``support``, ``prior``); hits and misses are counted per kind.
    """

    def __init__(self, budget_bytes: int, uses: dict[Hashable, list[int]]) -> None:
        self.budget = budget_bytes
        self.uses = uses
        self.entries: dict[Hashable, tuple[Any, int]] = {}
        self.used = 0
        self.peak = 0
        self.hits: Counter[str] = Counter()
        self.misses: Counter[str] = Counter()
        self.evictions = 0

    def next_use(self, key: Hashable, now: int) -> int | None:
        uses = self.uses.get(key, [])
        i = bisect.bisect_right(uses, now)
        return uses[i] if i < len(uses) else None

    def get(self, key: Hashable) -> Any | None:
        """The kept value (counted as a hit), or None (counted as a miss)."""
        entry = self.entries.get(key)
        if entry is None:
            self.misses[_kind(key)] += 1
            return None
        self.hits[_kind(key)] += 1
        return entry[0]

    def keep(self, key: Hashable, value: Any, size: int) -> None:
        if self.budget <= 0 or key in self.entries:
            return
        self.entries[key] = (value, size)
        self.used += size

    def settle(self, now: int) -> None:
        nexts = {key: self.next_use(key, now) for key in self.entries}
        for key, when in nexts.items():
            if when is None:
                self._drop(key)
        while self.used > self.budget and self.entries:
            farthest = max(self.entries, key=lambda k: nexts[k])  # type: ignore[arg-type,return-value]
            self._drop(farthest)
            self.evictions += 1
        self.peak = max(self.peak, self.used)

    def _drop(self, key: Hashable) -> None:
        _, size = self.entries.pop(key)
        self.used -= size


def _kind(key: Hashable) -> str:
    return str(key[0]) if isinstance(key, tuple) and key else "other"


@dataclass
class EncodedQuery:
    name: str
    code: QueryCode
    mask: np.ndarray  # original-size class mask of the query image

    @property
    def nbytes(self) -> int:
        return self.code.nbytes + self.mask.nbytes


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
    """Per seed and output, the accumulated few-shot meter; plus the base learner's meter.

    ``cache`` holds the reuse figures: ``hits`` / ``misses`` (codes found / encoded),
    ``backbone_passes`` and ``passes_per_episode``, ``evictions`` (codes dropped while still
    needed later), ``bytes`` (peak bytes kept between batches), the encode and decode seconds
    and the ``order`` (planned or straightforward).
    """

    meters: dict[int, dict[str, FewShotMeter]]
    classes: tuple[int, ...]  # the classes the meters index, in order
    base: SemanticMeter | None
    episodes: int
    seconds: float
    cache: dict[str, Any] = field(default_factory=dict)

    @property
    def backbone_passes(self) -> int:
        return int(self.cache.get("backbone_passes", 0))


class Planned(NamedTuple):
    """One episode of the plan: its seed, index, recipe and class index."""

    seed: int
    index: int
    recipe: Recipe
    class_index: int


def query_key(item: ListItem) -> Hashable:
    return ("query", item.image)


def support_key(item: ListItem, class_id: int, annotation: str) -> Hashable:
    return ("support", item.image, class_id, annotation)


def prior_key(query: Hashable, support: Hashable) -> Hashable:
    """The prior maps of a (query, support) pair, which recurs across seeds."""
    return ("prior", query, support)


class EpisodeRunner:
    """Encodes and decodes evaluation episodes of one fold with a trained HDMNet.

    ``cache_mb`` bounds the codes kept between batches (0: the straightforward protocol);
    ``batch_size`` episodes are decoded together.
    """

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
        if batch_size < 1:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        if cache_mb < 0:
            raise ValueError(f"cache_mb must be >= 0, got {cache_mb}")
        self.model = model.eval()
        self.root = Path(root)
        self.fold_dir = Path(fold_dir)
        self.shot = shot
        self.transform = EvalTransform(image_size)
        self.annotation = annotation
        self.cache_bytes = cache_mb * 2**20
        self.batch_size = batch_size
        self.device = device or torch.device("cpu")
        self.passes = 0
        self.misses = 0
        self.encode_seconds = 0.0

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

    # -- encoding: one image, one backbone pass, reduced at once to its code ----------------

    def encode_query(self, item: ListItem, classes: int) -> EncodedQuery:
        start = time.perf_counter()
        image, mask = load_pair(self.root, item, classes)
        tensor, _ = self.transform(image, [])
        with torch.inference_mode():
            feats = self.model.encode_query(torch.from_numpy(tensor)[None].to(self.device))
            code = self.model.query_code(feats)
        self.passes += 1
        self.encode_seconds += time.perf_counter() - start
        return EncodedQuery(item.image, code, mask)

    def encode_support(self, item: ListItem, class_id: int, classes: int) -> SupportCode:
        start = time.perf_counter()
        image, mask = load_pair(self.root, item, classes)
        label = binary_mask(mask, class_id)
        if self.annotation == "bbox":
            label = bbox_mask(label)
        tensor, (resized,) = self.transform(image, [label])
        mask_t = torch.from_numpy(resized.astype(np.int64)).to(self.device)[None]
        with torch.inference_mode():
            feats = self.model.encode_support(
                torch.from_numpy(tensor)[None].to(self.device), mask_t
            )
            code = self.model.support_code(feats, mask_t)
        self.passes += 1
        self.encode_seconds += time.perf_counter() - start
        return code

    # -- planning --------------------------------------------------------------------------

    def plan(self, datasets: dict[int, EpisodeDataset], indices: Sequence[int]) -> list[Planned]:
        """Every episode of every seed, in the order the work will be done (module docstring)."""
        episodes = []
        for seed, ds in datasets.items():
            for i in indices:
                recipe = ds.episode_recipe(i)
                episodes.append(Planned(seed, i, recipe, ds.classes.index(recipe.class_id)))
        if self.cache_bytes == 0:
            return episodes
        seed_order = {seed: n for n, seed in enumerate(datasets)}
        return sorted(
            episodes,
            key=lambda e: (e.class_index, e.recipe.query.image, seed_order[e.seed], e.index),
        )

    def batches(self, plan: Sequence[Planned]) -> list[list[Planned]]:
        """Consecutive batches; in the straightforward order a batch never spans two seeds."""
        out: list[list[Planned]] = []
        for episode in plan:
            if (
                not out
                or len(out[-1]) == self.batch_size
                or (self.cache_bytes == 0 and out[-1][-1].seed != episode.seed)
            ):
                out.append([])
            out[-1].append(episode)
        return out

    def _uses(self, batches: Sequence[Sequence[Planned]]) -> dict[Hashable, list[int]]:
        uses: dict[Hashable, list[int]] = {}
        for t, batch in enumerate(batches):
            for e in batch:
                for key in self._keys(e.recipe):
                    when = uses.setdefault(key, [])
                    if not when or when[-1] != t:
                        when.append(t)
        return uses

    def _keys(self, recipe: Recipe) -> list[Hashable]:
        q = query_key(recipe.query)
        supports = [support_key(s, recipe.class_id, self.annotation) for s in recipe.supports]
        return [q, *supports, *(prior_key(q, s) for s in supports)]

    # -- decoding --------------------------------------------------------------------------

    def _batch(
        self,
        recipes: Sequence[Recipe],
        class_indices: Sequence[int],
        classes: int,
        pad_to: int,
        store: CodeStore | None = None,
        now: int = 0,
    ) -> list[Decoded]:
        """Codes of a batch's episodes (kept, or encoded: once per batch with a store, once per
        episode without), decoded together, padded to ``pad_to`` episodes."""
        batch: dict[Hashable, Any] = {}

        def fetch(key: Hashable, compute: Callable[[], Any]) -> Any:
            if store is None:
                self.misses += 1
                return compute()
            if key in batch:
                store.hits[_kind(key)] += 1
                return batch[key]
            value = store.get(key)
            batch[key] = compute() if value is None else value
            return batch[key]

        queries, supports, pairs = [], [], []
        for r in recipes:
            q = query_key(r.query)
            queries.append(fetch(q, lambda r=r: self.encode_query(r.query, classes)))
            for s in r.supports:
                key = support_key(s, r.class_id, self.annotation)
                supports.append(
                    fetch(key, lambda s=s, r=r: self.encode_support(s, r.class_id, classes))
                )
                pairs.append(prior_key(q, key))
        n = len(recipes)
        pad = max(0, pad_to - n)
        query_code = QueryCode.cat([q.code for q in queries] + [queries[-1].code] * pad)
        support_code = SupportCode.cat(list(supports) + list(supports[-self.shot :]) * pad)
        priors = None
        if store is not None:
            pairs += pairs[-self.shot :] * pad
            priors = self._priors(pairs, query_code, support_code, batch, store, n * self.shot)
        out = self.model.decode_codes(query_code, support_code, priors=priors)
        if store is not None:
            for key, value in batch.items():
                store.keep(key, value, value.nbytes)
            store.settle(now)

        results = []
        for b in range(n):
            recipe, query = recipes[b], queries[b]
            label = binary_mask(query.mask, recipe.class_id)
            logits = {
                "final": upsample_to_label(out.final[b : b + 1], label.shape)[0],
                "meta": upsample_to_label(out.meta[b : b + 1], label.shape)[0],
            }
            results.append(
                Decoded(
                    recipe=recipe,
                    class_index=class_indices[b],
                    logits=logits,
                    label=label,
                    query=query,
                    correlations=[c[b] for c in out.correlations],
                )
            )
        return results

    def _priors(
        self,
        pairs: Sequence[Hashable],
        query_code: QueryCode,
        support_code: SupportCode,
        batch: dict[Hashable, Any],
        store: CodeStore,
        real: int,
    ) -> torch.Tensor:
        """Prior maps of the batch's (query, support) pairs: kept ones reused, others computed
        (each on its own, so a kept map equals a fresh one bit for bit). The pairs after the
        first ``real`` are padding copies."""
        maps: dict[Hashable, torch.Tensor] = {}
        missing: list[tuple[int, int]] = []
        missing_keys: list[Hashable] = []
        for j, key in enumerate(pairs):
            if key in maps or key in missing_keys:
                if j < real:  # not a padding copy
                    store.hits["prior"] += 1
                continue
            value = store.get(key)
            if value is None:
                missing.append((j // self.shot, j))
                missing_keys.append(key)
            else:
                maps[key] = value
        if missing:
            fresh = self.model.pair_priors(query_code, support_code, missing)
            for key, value in zip(missing_keys, fresh, strict=True):
                maps[key] = value.clone()
        for key in maps:
            batch[key] = maps[key]
        return torch.stack([maps[key] for key in pairs])

    def decode_batch(self, dataset: EpisodeDataset, indices: Sequence[int]) -> list[Decoded]:
        """Decode episodes ``indices`` together, encoding their images afresh."""
        self.model.eval()
        recipes = [dataset.episode_recipe(i) for i in indices]
        class_indices = [dataset.classes.index(r.class_id) for r in recipes]
        return self._batch(recipes, class_indices, dataset.num_classes, len(recipes))

    # -- the protocol ----------------------------------------------------------------------

    def run(
        self,
        seeds: Sequence[int],
        episodes: int,
        rank: int = 0,
        world_size: int = 1,
        base_classes: tuple[str, int, str] | None = None,
        desc: str = "evaluate",
        on_episode: Callable[[Planned, Decoded], None] | None = None,
    ) -> ProtocolResult:
        """Every seed's episodes (this process's share ``rank::world_size``).

        With ``base_classes`` = (dataset, fold, scheme), the base learner's semantic
        segmentation of the base classes is also scored once on every distinct query image.
        ``on_episode`` sees every decoded episode (benchmarks compare predictions with it).
        """
        start = time.perf_counter()
        self.model.eval()
        self.passes = 0
        self.misses = 0
        datasets = {seed: self.dataset(seed, episodes) for seed in seeds}
        first = datasets[seeds[0]]
        meters = {
            seed: {name: FewShotMeter(len(ds.classes)) for name in OUTPUTS}
            for seed, ds in datasets.items()
        }
        lut = None if base_classes is None else base_label_map(*base_classes)
        base_meter = None if lut is None else SemanticMeter(int(lut[lut != 255].max()) + 1)
        scored: set[str] = set()

        batches = self.batches(self.plan(datasets, range(rank, episodes, world_size)))
        store = CodeStore(self.cache_bytes, self._uses(batches)) if self.cache_bytes else None
        self.encode_seconds = 0.0
        bar = progress(batches, desc=desc)
        for t, batch in enumerate(bar):
            decoded = self._batch(
                [e.recipe for e in batch],
                [e.class_index for e in batch],
                first.num_classes,
                self.batch_size,
                store,
                t,
            )
            for e, episode in zip(batch, decoded, strict=True):
                if on_episode is not None:
                    on_episode(e, episode)
                label_t = torch.from_numpy(episode.label.astype(np.int64))
                for name in OUTPUTS:
                    prediction = binary_prediction(episode.logits[name])
                    meters[e.seed][name].update(episode.class_index, prediction, label_t)
                if base_meter is not None and episode.query.name not in scored:
                    scored.add(episode.query.name)
                    self._score_base(episode.query, base_meter, lut)
            bar.set(miou=100 * meters[batch[-1].seed]["final"].miou())

        total = sum(len(b) for b in batches)
        seconds = time.perf_counter() - start
        hits = store.hits if store is not None else Counter()
        misses = store.misses if store is not None else Counter(image=self.misses)
        cache = {
            "order": "planned" if store is not None else "straightforward",
            "hits": hits["query"] + hits["support"],
            "misses": self.passes,
            "prior_hits": hits["prior"],
            "prior_misses": misses["prior"],
            "evictions": store.evictions if store is not None else 0,
            "bytes": store.peak if store is not None else 0,
            "backbone_passes": self.passes,
            "passes_per_episode": self.passes / max(1, total),
            "encode_seconds": self.encode_seconds,
            "decode_seconds": seconds - self.encode_seconds,
        }
        return ProtocolResult(
            meters=meters,
            classes=tuple(first.classes),
            base=base_meter,
            episodes=episodes,
            seconds=seconds,
            cache=cache,
        )

    def _score_base(self, query: EncodedQuery, meter: SemanticMeter, lut: np.ndarray) -> None:
        logits = upsample_to_label(query.code.base, query.mask.shape)
        label = torch.from_numpy(apply_label_map(query.mask, lut))
        meter.update(class_prediction(logits[0]).cpu(), label)
