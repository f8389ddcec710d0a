"""The qualitative episodes of the report, made by running a trained meta learner
(``hdmnet.evaluate.examples``), are arrays the report's figures draw."""

from __future__ import annotations

import numpy as np
from tests.train.test_engines import RUN, trained_setup

from hdmnet.evaluate.examples import episode_views
from hdmnet.report import figures


def test_episode_views_of_a_trained_run_are_drawable(embedded_data):
    trained = trained_setup(embedded_data)  # shared with the training tests of the session
    views = episode_views(trained.params, RUN, 2)
    assert len(views) == 2
    for view in views:
        view.check()
        assert view.query.dtype == np.uint8 and view.query.ndim == 3
        assert set(np.unique(view.prediction)) <= {0, 1}
        assert len(view.supports) == len(view.support_masks) == RUN.shot
        assert view.correlations and all(c.ndim == 2 for c in view.correlations)
        assert 0.0 <= view.iou <= 100.0
    assert len(figures.qualitative_grid(views).axes) == 2 * (RUN.shot + 3)
