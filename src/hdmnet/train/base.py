"""``hdmnet train-base``: the PSPNet base learner of one dataset, backbone, fold and seed (BAM
protocol: SGD unless ``base.<dataset>.optimizer`` says adamw, poly, random scale/rotate/blur/
flip/crop, base classes only, on every training image unless ``base.<dataset>.images`` says
base_only), validated on the base-class mIoU of the validation images every epoch after the first
``base.<dataset>.val_skip`` of them; keeps the best validated and the last checkpoint."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from hdmnet import identity, layout
from hdmnet.config import Params
from hdmnet.data.episodes import BaseDataset
from hdmnet.data.folds import base_label_map
from hdmnet.data.lists import LIST_FILES, full_list, read_list
from hdmnet.data.transforms import EvalTransform, TrainTransform
from hdmnet.errors import StageError
from hdmnet.evaluate.metrics import SemanticMeter, class_prediction, upsample_to_label
from hdmnet.fileio import file_digest
from hdmnet.jobs.checks import base_cell, ensure_writable
from hdmnet.jobs.distributed import (
    all_reduce_sum,
)
from hdmnet.jobs.inputs import data_hash, dataset_root, fold_folder
from hdmnet.jobs.provenance import provenance
from hdmnet.layout import BaseRun
from hdmnet.model import CheckpointError, PSPNet, load_checkpoint, save_checkpoint
from hdmnet.model.optim import build_pspnet_optimizer
from hdmnet.records import BASE_KIND, write_record
from hdmnet.train import setup
from hdmnet.train.loop import Loop

log = logging.getLogger("hdmnet.train")


def base_datasets(params: Params, base: BaseRun) -> tuple[BaseDataset, BaseDataset]:
    """The base learner's training and validation sets, base classes relabelled 1..B in the
    fold's base order and novel classes as background.

    Training images by ``base.<dataset>.images``: ``all``, every image of the full training list
    (BAM's protocol: the base learner sees novel objects, as background); ``base_only``, the
    fold's list under the exclusion rule (only images whose classes are all base), whatever
    ``data.exclude_novel`` says for meta-training. Validation: every validation image.
    """
    schedule = getattr(params.base, base.dataset)
    root = dataset_root(params, base.dataset)
    lut = base_label_map(base.dataset, base.fold, layout.scheme(params, base.dataset))
    train_set = BaseDataset(
        root,
        read_list(base_training_list(params, base)),
        lut,
        TrainTransform(schedule.crop, scale=tuple(schedule.scale), crop=True),
        seed=base.seed,
        cache_mb=params.train.cache_mb,
    )
    val_items = read_list(full_list(root, "val"))
    val_set = BaseDataset(root, val_items, lut, EvalTransform(schedule.val_size), keep_label=True)
    return train_set, val_set


def base_training_list(params: Params, base: BaseRun) -> Path:
    """The list file of the base learner's training images (see :func:`base_datasets`)."""
    if getattr(params.base, base.dataset).images == "all":
        fold_folder(params, base.dataset, base.fold)  # a missing prepare stage is named as such
        return full_list(dataset_root(params, base.dataset), "train")
    folder = fold_folder(params, base.dataset, base.fold, exclude_novel=True)
    return folder / LIST_FILES["train"]


def train_base(params: Params, base: BaseRun) -> dict[str, Any]:
    """Train one base learner; returns its training record."""
    dataset, backbone, fold, seed = base.dataset, base.backbone, base.fold, base.seed
    schedule = getattr(params.base, dataset)
    out = ensure_writable(layout.base_dir(params, base))
    info, started = setup.begin(params, seed)
    train_set, val_set = base_datasets(params, base)
    loader, sampler, batch = setup.epoch_loader(
        train_set, schedule.batch_size, seed, info, params.train.workers
    )

    model = PSPNet.from_config(params, base).to(info.device)
    optimizer = build_pspnet_optimizer(
        model,
        schedule.lr,
        head_scale=schedule.head_lr_mult,
        momentum=schedule.momentum,
        weight_decay=schedule.weight_decay,
        kind=schedule.optimizer,
    )
    net = setup.across_processes(model, info, sync_bn=True)
    job = identity.base_learner(params, base)
    cell = base_cell(dataset, backbone, fold)

    def step(batch_: dict[str, Any]) -> tuple[float, dict[str, float]]:
        logits = net(batch_["image"].to(info.device))
        loss = PSPNet.loss(logits, batch_["mask"].to(info.device))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        return float(loss.detach()), {}

    validation = BaseValidation(val_set, info, params.eval.cache_mb)

    def validate() -> float:
        return 100 * validation(model).miou()

    loop = Loop(
        model=net,
        optimizer=optimizer,
        loader=loader,
        sampler=sampler,
        datasets=[train_set],
        epochs=schedule.epochs,
        base_lr=schedule.lr,
        step=step,
        validate=validate,
        state_path=out / "state.pth",
        identity={**cell, "identity": job},
        info=info,
        desc=base.name,
        unvalidated_epochs=schedule.unvalidated_epochs(),
    )
    return setup.run(
        loop,
        stage="train-base",
        name=base.name,
        tracking=params,
        tags={
            **base.fields(),
            "data_hash": data_hash(base_training_list(params, base).parent),
            "global_batch": schedule.batch_size,
        },
        checkpoint_meta={
            **cell,
            "train_seed": seed,
            "identity": job,
            "config": params.to_dict(),
        },
        fields={
            "kind": BASE_KIND,
            "selection": "best_val",
            "per_process_batch": batch,
            "config": params.to_dict(),
        },
        params=params,
        started=started,
    )


def import_base_learner(params: Params, base: BaseRun, source: Path) -> dict[str, Any]:
    """Install a PSPNet base learner made elsewhere (BAM's release, another run of ours) as
    ``base``, with a training record that marks it as imported. It carries the current
    base-learner identity, so the workflow uses it instead of training one for as long as the
    base-learner parameters stay as they are."""
    out = ensure_writable(layout.base_dir(params, base))
    model = PSPNet.from_config(params, base)
    cell = base_cell(base.dataset, base.backbone, base.fold)
    try:
        loaded = load_checkpoint(source, model, expected=cell)
    except CheckpointError as error:
        raise StageError(str(error)) from None
    job = identity.base_learner(params, base)
    imported = {"path": str(source.resolve()), "sha256": file_digest(source)}
    meta = {**cell, "train_seed": base.seed, "identity": job, "imported": imported}
    meta["config"] = params.to_dict()
    best = save_checkpoint(
        out / "best.pth", model, {**meta, "selection": "imported"}, epoch=loaded.get("epoch")
    )
    # A resume state left by an earlier training of this fold did not lead to this file.
    (out / "state.pth").unlink(missing_ok=True)
    record = {
        "kind": BASE_KIND,
        **base.fields(),
        "selection": "imported",
        "imported": imported,
        "epochs": [],
        "best_epoch": loaded.get("epoch"),
        "best_val_miou": None,
        "checkpoints": {"best": {"path": str(best), "sha256": file_digest(best)}},
        "config": params.to_dict(),
        "config_digest": job,
        "seconds": 0.0,
        "mlflow_run_id": None,
        **provenance(params, torch.device("cpu")),
    }
    write_record(out / "record.json", record)
    return record


class BaseValidation:
    """Base-class IoU over this process's share of the validation images, summed over all.

    Validation inputs are deterministic (``EvalTransform``), so they are prepared once and kept
    for every later epoch when they fit in ``budget_mb`` (``eval.cache_mb``; beyond it they are
    read again each time), and the model sees them in batches of ``batch_size``.
    """

    def __init__(
        self, val_set: BaseDataset, info: Any, budget_mb: int, batch_size: int = 16
    ) -> None:
        self.val_set = val_set
        self.info = info
        self.indices = list(range(info.rank, len(val_set), info.world_size))
        self.budget = budget_mb * 2**20
        self.batch_size = batch_size
        self._kept: list[tuple[torch.Tensor, torch.Tensor]] | None = None

    def _samples(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        if self._kept is not None:
            yield from self._kept
            return
        kept: list[tuple[torch.Tensor, torch.Tensor]] | None = []
        size = 0
        for index in self.indices:
            sample = self.val_set[index]
            image, label = sample["image"], sample["label"].to(torch.uint8)  # labels fit 0..255
            if kept is not None:
                size += image.nbytes + label.nbytes
                if size <= self.budget:
                    kept.append((image, label))
                else:
                    kept = None  # over budget: read the images again next time
            yield image, label
        self._kept = kept

    @torch.inference_mode()
    def __call__(self, model: PSPNet) -> SemanticMeter:
        was_training = model.training
        model.eval()
        meter = SemanticMeter(self.val_set.num_classes)
        batch: list[tuple[torch.Tensor, torch.Tensor]] = []

        def flush() -> None:
            images = torch.stack([image for image, _ in batch]).to(self.info.device)
            logits = model(images)
            for row, (_, label) in enumerate(batch):
                upsampled = upsample_to_label(logits[row : row + 1], tuple(label.shape))
                meter.update(class_prediction(upsampled[0]).cpu(), label.long())
            batch.clear()

        for pair in self._samples():
            batch.append(pair)
            if len(batch) == self.batch_size:
                flush()
        if batch:
            flush()
        meter.inter = all_reduce_sum(meter.inter, self.info)
        meter.union = all_reduce_sum(meter.union, self.info)
        model.train(was_training)
        return meter


__all__ = ["BaseValidation", "import_base_learner", "train_base"]
