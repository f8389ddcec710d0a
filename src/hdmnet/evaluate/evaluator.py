"""``hdmnet evaluate``: the test protocol for one trained HDMNet, written as a metrics record.

Works from our checkpoints (the one selected by ``meta.selection``) and from official HDMNet
checkpoints (``--checkpoint``). Every seed's mIoU and FB-IoU are kept, with their mean and
standard deviation, per-class IoU, the episode count, the checkpoint's hash and the timings.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from hdmnet import commands, identity, layout
from hdmnet.config import VARIANT_NAME, Params
from hdmnet.data.classes import COCO_CATEGORIES, VOC_CLASSES
from hdmnet.errors import StageError
from hdmnet.evaluate.baseline import baseline_section, evaluate_baseline
from hdmnet.evaluate.metrics import FewShotMeter, summarise_seeds
from hdmnet.evaluate.protocol import OUTPUTS, EpisodeRunner, ProtocolResult
from hdmnet.fileio import file_digest
from hdmnet.jobs.checks import ensure_writable, meta_cell, require_identity
from hdmnet.jobs.distributed import init_distributed, set_threads
from hdmnet.jobs.inputs import data_hash, dataset_root, fold_folder
from hdmnet.jobs.provenance import provenance
from hdmnet.layout import Run
from hdmnet.model import CheckpointError, HDMNet, load_checkpoint
from hdmnet.records import METRICS_KIND, write_record
from hdmnet.tracking import Tracker

log = logging.getLogger("hdmnet.evaluate")


@dataclass(frozen=True)
class External:
    """A checkpoint made outside the pipeline (official HDMNet, another run) and the name its
    records and table rows carry."""

    name: str
    checkpoint: Path


def check_external_name(name: str) -> None:
    if name == "full" or not VARIANT_NAME.fullmatch(name):
        raise StageError(
            f"external name {name!r}: use letters, digits and _, starting with a letter "
            "(it names a results folder and the table rows)"
        )


def class_names(dataset: str) -> dict[int, str]:
    if dataset == "pascal":
        return {i + 1: name for i, name in enumerate(VOC_CLASSES)}
    return {i + 1: cat["name"] for i, cat in enumerate(COCO_CATEGORIES)}


def summarise(
    meters: dict[int, dict[str, FewShotMeter]], classes: tuple[int, ...]
) -> dict[str, dict[str, Any]]:
    """Mean, standard deviation and per-seed values of mIoU and FB-IoU (in %) per output."""
    return {
        name: summarise_seeds({seed: m[name] for seed, m in meters.items()}, classes)
        for name in OUTPUTS
    }


def per_seed_rows(outputs: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per test seed: the seed and each output's mIoU and FB-IoU (in %)."""
    rows: dict[int, dict[str, Any]] = {}
    for name in OUTPUTS:
        for entry in outputs[name]["per_seed"]:
            row = rows.setdefault(entry["seed"], {"seed": entry["seed"]})
            row[f"{name}_miou"] = entry["miou"]
            row[f"{name}_fbiou"] = entry["fbiou"]
    return list(rows.values())


def evaluate(
    params: Params,
    run: Run,
    external: External | None = None,
    cache_mb: int | None = None,
    batch_size: int = 16,
    out: Path | None = None,
) -> dict[str, Any]:
    """Run the protocol for ``run`` and write its metrics record; returns the record.

    Without ``external`` the pipeline's own checkpoint of ``run`` is tested (it must have been
    trained with the current parameters) and the record goes to ``layout.metrics_file``; an
    external checkpoint's record goes to its own place (``layout.external_metrics_file``) and
    never overwrites the pipeline's. ``cache_mb`` (default ``eval.cache_mb``) bounds the
    feature cache, 0 disables reuse; ``batch_size`` episodes are decoded together (1: one at a
    time, as the official test loop); ``out`` overrides where the record is written.
    """
    variant_params = params.for_variant(run.variant)
    schedule = getattr(variant_params.meta, run.dataset)
    if external is None:
        path = layout.meta_checkpoint(variant_params, run)
        target = out or layout.metrics_file(params, run)
    else:
        check_external_name(external.name)
        path = external.checkpoint
        target = out or layout.external_metrics_file(params, external.name, run)
    ensure_writable(target.parent)
    set_threads(params)
    info = init_distributed()
    model = HDMNet.from_config(variant_params, run).to(info.device)
    if not path.exists():
        raise StageError(
            f"checkpoint {path} not found: train it first ({commands.train(run, params)})"
        )
    expected = meta_cell(run)
    if external is not None:
        expected.pop("variant")  # an official or external checkpoint names no variant
    try:
        loaded = load_checkpoint(path, model, expected=expected)
    except CheckpointError as error:
        raise StageError(str(error)) from None
    sha256 = file_digest(path)
    if external is None:
        require_identity(
            path, loaded["meta"], identity.meta_learner(params, run), commands.train(run, params)
        )
        job = identity.evaluation(params, run)
    else:
        job = identity.external_evaluation(params, run, sha256)
    model.eval()

    root = dataset_root(params, run.dataset)
    # Test lists never depend on the exclusion rule (it only filters training images).
    fold_dir = fold_folder(params, run.dataset, run.fold)
    runner = EpisodeRunner(
        model,
        root,
        fold_dir,
        run.shot,
        schedule.image_size,
        annotation=params.eval.support_annotation,
        cache_mb=params.eval.cache_mb if cache_mb is None else cache_mb,
        batch_size=batch_size,
        device=info.device,
    )
    tags = {
        "dataset": run.dataset,
        "backbone": run.backbone,
        "fold": run.fold,
        "shot": run.shot,
        "variant": run.variant,
        "train_seed": run.seed,
        "data_hash": data_hash(fold_dir),
    }
    label = run.name if external is None else f"{run.name} external:{external.name}"
    with Tracker(variant_params, "evaluate", label, tags=tags, rank=info.rank) as tracker:
        result = runner.run(
            params.eval.seeds,
            schedule.test_episodes,
            base_classes=(run.dataset, run.fold, layout.scheme(params, run.dataset)),
            desc=f"evaluate {run.name}",
        )
        record = _record(variant_params, run, path, sha256, loaded, result, fold_dir, info.device)
        record["config_digest"] = job
        if external is not None:
            record["external"] = {"name": external.name, "path": str(path), "sha256": sha256}
        elif params.eval.baseline != "none" and run.variant == "full":
            # A row of the main table, which shows the full model: an ablation variant's record
            # would only repeat it (the same for every variant but no_exclusion's tuning list),
            # for about 3 s of a 10-s evaluation of the demo. The model's frozen encoder is the
            # run's base learner (its checkpoint holds it).
            found = evaluate_baseline(params, run, params.eval.baseline, encoder=model)
            record["baseline"] = baseline_section(found)
            tracker.log_metrics({"baseline_miou": record["baseline"]["miou"]})
        record["mlflow_run_id"] = tracker.run_id
        write_record(target, record)
        outputs = record["outputs"]
        for name in OUTPUTS:
            keys = ("miou", "miou_std", "fbiou", "fbiou_std")
            tracker.log_metrics({f"{name}_{key}": outputs[name][key] for key in keys})
        tracker.log_metrics({"base_class_miou": outputs["base"]["miou"]})
        # One row per test seed (a table: a metric's step is no place for a seed number).
        tracker.log_table("per_seed.json", per_seed_rows(outputs))
        tracker.log_artifact(target)
    baseline = "baseline" in record
    log.info(
        "%s: mIoU %.2f (meta %.2f), FB-IoU %.2f over %d seeds x %d episodes in %.1f s%s",
        run.name,
        record["miou"],
        record["outputs"]["meta"]["miou"],
        record["fbiou"],
        len(params.eval.seeds),
        schedule.test_episodes,
        result.seconds,
        f"; training-free baseline {record['baseline']['miou']:.2f}" if baseline else "",
    )
    return record


def _record(
    params: Params,
    run: Run,
    path: Path,
    sha256: str,
    loaded: dict[str, Any],
    result: ProtocolResult,
    fold_dir: Path,
    device: Any,
) -> dict[str, Any]:
    names = class_names(run.dataset)
    classes = result.classes
    outputs = summarise(result.meters, classes)
    base_iou = result.base.class_iou()[1:] if result.base is not None else np.array([])
    outputs["base"] = {
        "what": "base learner, semantic segmentation of the fold's base classes on the "
        "distinct test query images (BAM's base-learner metric), one value (no seeds)",
        "miou": 100 * result.base.miou() if result.base is not None else None,
        "class_iou": {str(i + 1): float(100 * v) for i, v in enumerate(base_iou)},
    }
    total_episodes = result.episodes * len(result.meters)
    meta = loaded.get("meta", {})
    return {
        "kind": METRICS_KIND,
        **run.fields(),
        "split": layout.split_name(params, run.dataset),
        "miou": outputs["final"]["miou"],
        "fbiou": outputs["final"]["fbiou"],
        "outputs": outputs,
        "classes": list(classes),
        "class_names": [names[c] for c in classes],
        "seeds": list(result.meters),
        "episodes_per_seed": result.episodes,
        "annotation": params.eval.support_annotation,
        "checkpoint": {
            "path": str(path),
            "sha256": sha256,
            "selection": meta.get("selection", "external"),
            "epoch": loaded.get("epoch"),
            "identity": meta.get("identity"),
        },
        "config": params.to_dict(),
        "data_hash": data_hash(fold_dir),
        "timing": {
            "seconds": result.seconds,
            "ms_per_episode": 1000 * result.seconds / max(1, total_episodes),
            "cache": result.cache,
        },
        **provenance(params, device),
    }
