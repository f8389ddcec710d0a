"""Test episodes as pictures for the report's qualitative grids and correlation maps.

Runs the selected checkpoint of a run on the first episodes of the first test seed (the same
episodes as the metrics) and returns them at the original image size, as numpy-only
``EpisodeView``s: the model runs here, so that the report itself renders without torch.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from hdmnet import layout
from hdmnet.config import Params
from hdmnet.data.episodes import binary_mask, load_pair
from hdmnet.evaluate.evaluator import class_names
from hdmnet.evaluate.metrics import FewShotMeter, binary_prediction
from hdmnet.evaluate.protocol import EpisodeRunner
from hdmnet.evaluate.views import EpisodeView
from hdmnet.jobs.checks import meta_cell
from hdmnet.jobs.inputs import dataset_root, fold_folder
from hdmnet.layout import Run
from hdmnet.model import HDMNet, load_checkpoint


def episode_views(params: Params, run: Run, count: int) -> list[EpisodeView]:
    """The first ``count`` test episodes of ``run`` with its predictions."""
    variant_params = params.for_variant(run.variant)
    schedule = getattr(variant_params.meta, run.dataset)
    model = HDMNet.from_config(variant_params, run)
    load_checkpoint(layout.meta_checkpoint(variant_params, run), model, meta_cell(run))
    root = dataset_root(params, run.dataset)
    runner = EpisodeRunner(
        model,
        root,
        fold_folder(params, run.dataset, run.fold),
        run.shot,
        schedule.image_size,
        annotation=params.eval.support_annotation,
        cache_mb=0,
    )
    dataset = runner.dataset(params.eval.seeds[0], schedule.test_episodes)
    names = class_names(run.dataset)
    views = []
    for episode in runner.decode_batch(dataset, range(min(count, len(dataset)))):
        recipe = episode.recipe
        query, _ = load_pair(Path(root), recipe.query, dataset.num_classes)
        prediction = binary_prediction(episode.logits["final"])
        supports, support_masks = [], []
        for item in recipe.supports:
            image, mask = load_pair(Path(root), item, dataset.num_classes)
            supports.append(image)
            support_masks.append(binary_mask(mask, recipe.class_id))
        meter = FewShotMeter(1)
        meter.update(0, prediction, torch.from_numpy(episode.label.astype(np.int64)))
        views.append(
            EpisodeView(
                query=query,
                label=episode.label,
                prediction=prediction.numpy().astype(np.uint8),
                supports=supports,
                support_masks=support_masks,
                class_name=names[recipe.class_id],
                correlations=[c.float().cpu().numpy() for c in episode.correlations],
                iou=100 * float(meter.class_iou()[0]),
            )
        )
    return views
