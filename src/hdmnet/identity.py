"""Job identities: which parameters each job's result depends on, and one hash per job.

A job's *identity* hashes exactly the parameters its result depends on **and the identities of
its inputs**: evaluation <- meta learner <- base learner <- prepared data <- downloaded archives
(<- generated archives). It is computed here and nowhere else, and it is what every consumer
compares:

- Snakemake: each rule passes it as a rule parameter, so the ``params`` rerun trigger reruns a job
  exactly when its identity changes, and with it everything downstream (a changed meta-learning
  rate changes every evaluation's identity too, so a retrain that was killed cannot leave an old
  metrics record looking current);
- DVC: ``dvc.yaml`` lists ``STAGE_KEYS`` as each stage's ``params`` (a test keeps them equal); the
  chain comes from DVC's own dependency graph;
- resume: a ``state.pth`` is continued only by a job of the same identity;
- records: training and metrics records, and checkpoints, carry it as ``config_digest``, and the
  tables refuse a record whose identity is not the one the current parameters give.

Execution settings (threads, GPUs, loader workers, cache budgets, tracking, paths, mirrors) are
not part of any identity: they change how a result is computed, not what it is. So is
``model.channels_last``, a memory layout: like the thread count it changes the order of float
additions, hence the last bits, not the argmax (``tests/evaluate/test_speed_settings.py``).
``model.bf16`` is not: the frozen encoder computes in bfloat16 and the numbers move.

This module imports nothing from the package at run time (the parameter validation in
``hdmnet.config`` uses ``STAGE_KEYS``), so it sits at the bottom of the layers.
"""

from __future__ import annotations

import hashlib
import json
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from hdmnet.config import Params
    from hdmnet.layout import BaseRun, Run

# Parameter keys per stage, as dotted paths; "{dataset}" is filled in per job. Upstream results
# are covered by the chain, so a stage lists only the keys it reads itself.
STAGE_KEYS: dict[str, tuple[str, ...]] = {
    "synth": ("synth",),
    # A mirror or a local copy yields the same verified bytes: where the archives come from is
    # not part of the result. Own archives (data.checksums) are: ``download`` adds them.
    "download": ("data.source",),
    # prepare writes the fold lists of every scheme, with and without the exclusion rule.
    "prepare": ("data.min_pixels",),
    "train_base": (
        "base.{dataset}",
        "model.small_blocks",
        "model.small_width",
        "model.pretrained",
        "model.bf16",
        "data.coco_split",
    ),
    "train": (
        "meta.{dataset}.epochs",
        "meta.{dataset}.shot_epochs",
        "meta.{dataset}.batch_size",
        "meta.{dataset}.lr",
        "meta.{dataset}.weight_decay",
        "meta.{dataset}.image_size",
        "meta.{dataset}.scale",
        "meta.{dataset}.val_episodes",
        "meta.{dataset}.val_every",
        "meta.{dataset}.val_skip",
        "meta.distill_weight",
        "meta.base_weight",
        "model.attention",
        "model.stages",
        "model.distill",
        "model.ensemble",
        "model.fix_quirks",
        "model.embed_dim",
        "model.bf16",
        "data.exclude_novel",
        # Validation episodes (which select the best checkpoint) use the support annotation.
        "eval.support_annotation",
    ),
    "evaluate": (
        "meta.{dataset}.image_size",
        "meta.{dataset}.test_episodes",
        "meta.selection",
        "model.bf16",
        "eval.seeds",
        "eval.support_annotation",
        "eval.baseline",
    ),
}


# The archives each data set's download fetches, by their keys in data.local_files and
# data.checksums.
ARCHIVES_OF: dict[str, tuple[str, ...]] = {
    "pascal": ("voc2012", "sbd", "sbd_train_noval"),
    "coco": ("coco_train2014", "coco_val2014", "coco_annotations2014"),
}


def stage_keys(stage: str, dataset: str | None = None) -> list[str]:
    """The dotted parameter keys ``stage`` reads (``{dataset}`` filled in)."""
    return [key.format(dataset=dataset) for key in STAGE_KEYS[stage]]


def lookup(raw: dict[str, Any], dotted: str) -> Any:
    node: Any = raw
    for part in dotted.split("."):
        node = node[part]
    return node


def synth(params: Params) -> str:
    return _identity("synth", params, None, {})


def download(params: Params, dataset: str) -> str:
    upstream = synth(params) if params.data.source == "synthetic" else None
    extra: dict[str, Any] = {"dataset": dataset, "upstream": upstream}
    # Own archives (data.checksums, used with the official source) are other bytes, so other
    # data; only then is the key part of the identity, so the official data's stays as it was.
    own = {
        key: params.data.checksums[key].lower()
        for key in ARCHIVES_OF[dataset]
        if key in params.data.checksums and params.data.source == "official"
    }
    if own:
        extra["checksums"] = own
    return _identity("download", params, dataset, extra)


def prepare(params: Params, dataset: str) -> str:
    return _identity(
        "prepare", params, dataset, {"dataset": dataset, "upstream": download(params, dataset)}
    )


def base_learner(params: Params, base: BaseRun) -> str:
    """A PSPNet base learner (dataset, backbone, fold, training seed)."""
    cell = {"dataset": base.dataset, "backbone": base.backbone, "fold": base.fold}
    upstream = prepare(params, base.dataset)
    return _identity(
        "train_base", params, base.dataset, {**cell, "seed": base.seed, "upstream": upstream}
    )


def meta_learner(params: Params, run: Run) -> str:
    """HDMNet meta-trained for ``run`` (its variant's overrides applied)."""
    variant = params.for_variant(run.variant)
    values = {key: lookup(variant.raw, key) for key in stage_keys("train", run.dataset)}
    # A job depends on its own epoch count only: editing another shot count's epochs (or
    # spelling out the default) is not a change to this job.
    del values[f"meta.{run.dataset}.shot_epochs"]
    values[f"meta.{run.dataset}.epochs"] = getattr(variant.meta, run.dataset).epochs_for(run.shot)
    upstream = base_learner(params, run.base)
    return _hash("train", {**values, **_cell(run), "upstream": upstream})


def evaluation(params: Params, run: Run) -> str:
    """The metrics record of ``run``: the protocol's settings and the meta learner tested."""
    variant = params.for_variant(run.variant)
    values = {key: lookup(variant.raw, key) for key in stage_keys("evaluate", run.dataset)}
    return _hash("evaluate", {**values, **_cell(run), "upstream": meta_learner(params, run)})


def external_evaluation(params: Params, run: Run, checkpoint_sha256: str) -> str:
    """An evaluation of a checkpoint made outside the pipeline (official, BAM...): the same
    protocol settings, with the checkpoint's content in place of the meta learner's chain."""
    values = {key: lookup(params.raw, key) for key in stage_keys("evaluate", run.dataset)}
    upstream = {"external_checkpoint": checkpoint_sha256, "data": prepare(params, run.dataset)}
    return _hash("evaluate", {**values, **_cell(run), "upstream": upstream})


def _cell(run: Run) -> dict[str, Any]:
    # The variant's name is not part of the identity: its values are.
    cell = {"dataset": run.dataset, "backbone": run.backbone, "fold": run.fold, "shot": run.shot}
    return {**cell, "seed": run.seed}


def _identity(stage: str, params: Params, dataset: str | None, extra: dict[str, Any]) -> str:
    values = {key: lookup(params.raw, key) for key in stage_keys(stage, dataset)}
    return _hash(stage, {**values, **extra})


def _hash(stage: str, values: dict[str, Any]) -> str:
    text = json.dumps({"stage": stage, **values}, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]
