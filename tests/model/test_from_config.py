"""The models a job builds from its parameters (``HDMNet.from_config``, ``PSPNet.from_config``)."""

from __future__ import annotations

import pytest
import torch

from hdmnet.config import BACKBONES, load_params
from hdmnet.errors import StageError
from hdmnet.layout import BaseRun, Run
from hdmnet.model import HDMNet, PSPNet
from hdmnet.model.backbone import build_backbone

# Every value differs from the schema's default, so a setting that is not passed on shows.
SETTINGS = [
    "model.attention=dot",
    "model.stages=2",
    "model.distill=false",
    "model.ensemble=false",
    "model.fix_quirks=true",
    "model.embed_dim=8",
    "model.small_blocks=[1, 2, 1, 1]",
    "model.small_width=0.125",
    "model.channels_last=true",
    "model.bf16=true",
    "meta.distill_weight=0.5",
    "meta.base_weight=0.25",
]


def test_hdmnet_from_config_takes_every_model_setting():
    params = load_params(None, SETTINGS)
    # No training seed: an external checkpoint's run (it has no base learner of ours).
    model = HDMNet.from_config(params, Run("pascal", "small", "full", 2, 5, None))
    assert (model.attention, model.num_stages, model.distill, model.ensemble) == (
        "dot",
        2,
        False,
        False,
    )
    assert model.fix_quirks and (model.distill_weight, model.base_weight) == (0.5, 0.25)
    assert (model.num_base_classes, model.shot) == (15, 5)
    assert [len(getattr(model, f"layer{i}")) for i in range(1, 5)] == [1, 2, 1, 1]
    assert model.layer4[0].conv3.out_channels == 2048 // 8  # width 0.125
    assert model.query_merge[0].out_channels == 8  # embed_dim
    assert model.channels_last and model.autocast_dtype == torch.bfloat16
    assert model.down_query[0].weight.is_contiguous(memory_format=torch.channels_last)


def test_defaults_build_the_official_model_in_float32():
    params = load_params(None, ["data.coco_split=fwb"])
    model = HDMNet.from_config(params, Run("coco", "small", "full", 0, 1, 1))
    assert (model.attention, model.num_stages, model.distill, model.ensemble) == (
        "matching",
        3,
        True,
        True,
    )
    assert model.num_base_classes == 60 and model.autocast_dtype is None
    assert not model.channels_last


def test_pspnet_from_config_sizes_the_base_learner(tmp_path):
    params = load_params(None, SETTINGS)
    model = PSPNet.from_config(params, BaseRun("pascal", "small", 0, 1))
    assert model.num_classes == 16 and model.cls[4].out_channels == 16
    assert [len(getattr(model, f"layer{i}")) for i in range(1, 5)] == [1, 2, 1, 1]
    assert model.channels_last and model.autocast_dtype == torch.bfloat16
    missing = tmp_path / "resnet50_v2.pth"
    params = load_params(None, [f"model.pretrained={{resnet50: {missing}}}"])
    with pytest.raises(StageError, match=r"model\.pretrained\.resnet50: .*resnet50_v2\.pth"):
        PSPNet.from_config(params, BaseRun("pascal", "resnet50", 0, 1))


def test_every_backbone_the_parameters_name_is_built():
    channels = {name: build_backbone(name).channels[3] for name in BACKBONES}
    assert channels == {"resnet50": 2048, "resnet101": 2048, "vgg16": 512, "small": 512}
