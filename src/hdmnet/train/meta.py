"""``hdmnet train``: HDMNet meta-training for one dataset, backbone, fold, shot and variant.

Starts from the fold's base learner (ours, or an official BAM PSPNet file), keeps it frozen,
trains the meta learner with AdamW and a poly schedule, validates on episodes of the fold's
novel classes every ``val_every`` epochs after the first ``val_skip`` of them (their
frozen-backbone features are cached across epochs) and keeps the best-validation and the last
checkpoint; ``meta.selection`` says which one is tested.
"""

from __future__ import annotations

import logging
from typing import Any

from hdmnet import commands, identity, layout
from hdmnet.config import Params
from hdmnet.data.episodes import EpisodeDataset
from hdmnet.data.transforms import TrainTransform
from hdmnet.errors import StageError
from hdmnet.evaluate.metrics import FewShotMeter
from hdmnet.evaluate.protocol import EpisodeRunner
from hdmnet.fileio import file_digest
from hdmnet.jobs.checks import base_cell, ensure_writable, meta_cell, require_identity
from hdmnet.jobs.distributed import (
    DistInfo,
    all_reduce_sum,
)
from hdmnet.jobs.inputs import data_hash, dataset_root, fold_folder
from hdmnet.layout import Run
from hdmnet.model import CheckpointError, HDMNet, load_checkpoint
from hdmnet.model.optim import build_hdmnet_optimizer
from hdmnet.records import TRAIN_KIND
from hdmnet.train import setup
from hdmnet.train.loop import Loop

log = logging.getLogger("hdmnet.train")


def train_meta(params: Params, run: Run) -> dict[str, Any]:
    """Meta-train ``run``; returns its training record."""
    variant_params = params.for_variant(run.variant)
    schedule = getattr(variant_params.meta, run.dataset)
    out = ensure_writable(layout.meta_dir(params, run))
    info, started = setup.begin(params, run.seed)
    root = dataset_root(params, run.dataset)
    train_dir = fold_folder(variant_params, run.dataset, run.fold)  # the variant's list rule
    val_dir = fold_folder(params, run.dataset, run.fold)

    model = HDMNet.from_config(variant_params, run).to(info.device)
    base_path = layout.base_checkpoint(params, run.base)
    if not base_path.exists():
        raise StageError(
            f"base learner {base_path} not found: train it first "
            f"({commands.train_base(run.base, params)})"
        )
    base_job = identity.base_learner(params, run.base)
    try:
        loaded = load_checkpoint(
            base_path, model, expected=base_cell(run.dataset, run.backbone, run.fold)
        )
    except CheckpointError as error:
        raise StageError(str(error)) from None
    require_identity(base_path, loaded["meta"], base_job, commands.train_base(run.base, params))

    train_set = EpisodeDataset(
        root,
        train_dir,
        "train",
        run.shot,
        TrainTransform(schedule.image_size, scale=tuple(schedule.scale)),
        seed=run.seed,
        cache_mb=params.train.cache_mb,
    )
    loader, sampler, batch = setup.epoch_loader(
        train_set, schedule.batch_size, run.seed, info, params.train.workers
    )
    optimizer = build_hdmnet_optimizer(model, schedule.lr, schedule.weight_decay)
    # Without the ensemble, gram_merge and cls_merge take no part in the loss.
    net = setup.across_processes(model, info, find_unused=not model.ensemble)
    runner = EpisodeRunner(
        model,
        root,
        val_dir,
        run.shot,
        schedule.image_size,
        annotation=params.eval.support_annotation,
        cache_mb=params.eval.cache_mb,
        device=info.device,
    )
    job = identity.meta_learner(params, run)
    base_sha256 = file_digest(base_path)
    checkpoint_meta = {**meta_cell(run), "identity": job, "config": variant_params.to_dict()}

    def step(batch_: dict[str, Any]) -> tuple[float, dict[str, float]]:
        device = info.device
        output = net(
            batch_["query"].to(device),
            batch_["supports"].to(device),
            batch_["support_masks"].to(device),
            query_mask=batch_["query_mask"].to(device),
            query_base_mask=batch_["query_base_mask"].to(device),
            class_ids=batch_["class_index"].to(device),
        )
        losses = output.losses
        optimizer.zero_grad(set_to_none=True)
        losses["total"].backward()
        optimizer.step()
        parts = {f"loss_{k}": float(v.detach()) for k, v in losses.items() if k != "total"}
        return float(losses["total"].detach()), parts

    def validate() -> float:
        return validation_miou(runner, run.seed, schedule.val_episodes, info)

    loop = Loop(
        model=net,
        optimizer=optimizer,
        loader=loader,
        sampler=sampler,
        datasets=[train_set],
        epochs=schedule.epochs_for(run.shot),
        base_lr=schedule.lr,
        step=step,
        validate=validate,
        state_path=out / "state.pth",
        # The base learner's bytes too: a swapped base file must not be trained on from a
        # state that began with another.
        identity={**meta_cell(run), "identity": job, "base_sha256": base_sha256},
        info=info,
        desc=f"train {run.name}",
        val_every=schedule.val_every,
        unvalidated_epochs=schedule.unvalidated_epochs(run.shot),
    )
    return setup.run(
        loop,
        stage="train",
        name=run.name,
        tracking=variant_params,
        tags={
            **run.fields(),
            "data_hash": data_hash(train_dir),
            "global_batch": schedule.batch_size,
        },
        checkpoint_meta=checkpoint_meta,
        fields={
            "kind": TRAIN_KIND,
            "selection": params.meta.selection,
            "per_process_batch": batch,
            "base_checkpoint": {
                "path": str(base_path),
                "sha256": base_sha256,
                "identity": base_job,
            },
            "config": variant_params.to_dict(),
        },
        params=params,
        started=started,
    )


def validation_miou(runner: EpisodeRunner, seed: int, episodes: int, info: DistInfo) -> float:
    """Final-output mIoU (%) on ``episodes`` validation episodes, shared over processes."""
    result = runner.run([seed], episodes, info.rank, info.world_size, desc="validate")
    meter: FewShotMeter = result.meters[seed]["final"]
    for name in ("class_inter", "class_union", "fb_inter", "fb_union"):
        setattr(meter, name, all_reduce_sum(getattr(meter, name), info))
    return 100 * meter.miou()


__all__ = ["train_meta", "validation_miou"]
