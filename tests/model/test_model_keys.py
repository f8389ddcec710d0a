"""State-dict keys, shapes, kinds and parameter counts against the official release."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import torch

from hdmnet.model.hdmnet import build_hdmnet
from hdmnet.model.optim import trainable_split

# Copies of ../shared/spec/official_keys_pascal_shot{1,5}.txt: CI's clean clone has no
# ../shared, so the fixtures are versioned here and checked against the spec when present.
FIXTURES = Path(__file__).parent / "fixtures"
SPEC = Path(__file__).resolve().parents[3] / "shared" / "spec"


def read_keys(shot: int) -> list[tuple[str, list[int], str, str]]:
    rows = []
    for line in (FIXTURES / f"official_keys_pascal_shot{shot}.txt").read_text().splitlines():
        if not line or line.startswith("#"):
            continue
        key, shape, dtype, kind = line.split("\t")
        rows.append((key, ast.literal_eval(shape), dtype, kind))
    return rows


@pytest.fixture(scope="module")
def resnet50_models():
    torch.manual_seed(0)
    return {shot: build_hdmnet("resnet50", 15, shot) for shot in (1, 5)}


@pytest.mark.parametrize("shot", [1, 5])
def test_state_dict_matches_official_keys(resnet50_models, shot):
    model = resnet50_models[shot]
    expected = read_keys(shot)
    state = model.state_dict()
    params = dict(model.named_parameters())
    assert [k for k, *_ in expected] == list(state), "keys or their order differ"
    for key, shape, dtype, kind in expected:
        tensor = state[key]
        assert list(tensor.shape) == shape, key
        assert str(tensor.dtype).replace("torch.", "") == dtype, key
        if key not in params:
            got = "buffer"
        else:
            got = "learnable" if params[key].requires_grad else "frozen"
        assert got == kind, key


def test_parameter_counts_match_model_md(resnet50_models):
    assert trainable_split(resnet50_models[1]) == (50_875_542, 4_161_734)
    assert trainable_split(resnet50_models[5]) == (50_875_542 + 27, 4_161_734 + 27)


def test_fixtures_match_spec_when_present():
    if not SPEC.is_dir():
        pytest.skip("../shared/spec is not beside this checkout (CI clean clone)")
    for shot in (1, 5):
        name = f"official_keys_pascal_shot{shot}.txt"
        assert (FIXTURES / name).read_text() == (SPEC / name).read_text(), name


def test_coco_and_resnet101_and_vgg_shapes():
    coco = build_hdmnet("resnet50", 60, 1).state_dict()
    assert tuple(coco["base_learnear.2.weight"].shape) == (61, 512, 1, 1)
    r101 = build_hdmnet("resnet101", 15, 1).state_dict()
    assert {k.split(".")[1] for k in r101 if k.startswith("layer3.")} == {str(i) for i in range(23)}
    vgg = build_hdmnet("vgg16", 15, 1).state_dict()
    assert tuple(vgg["down_query.0.weight"].shape) == (256, 768, 1, 1)
    assert tuple(vgg["ppm.features.0.1.weight"].shape) == (128, 512, 1, 1)
    assert tuple(vgg["cls.0.weight"].shape) == (512, 1024, 3, 3)
    assert tuple(vgg["layer1.0.weight"].shape) == (128, 64, 3, 3)  # torchvision features.7
    assert tuple(vgg["layer4.0.weight"].shape) == (512, 512, 3, 3)  # features.34


def test_initialisation_follows_the_official_code(resnet50_models):
    model = resnet50_models[1]
    for name in ("gram_merge", "cls_merge"):
        assert getattr(model, name).weight.flatten().tolist() == [1.0, 0.0]
    conv_bn = model.transformer.mix_transformer.match_layers[0][1]
    assert torch.equal(conv_bn.bn.weight, torch.ones(64))
    assert torch.equal(conv_bn.bn.bias, torch.zeros(64))
    # kaiming normal, fan_out = 64 * 3 * 3: std = sqrt(2 / 576)
    std = float(conv_bn.conv.weight.detach().std())
    assert abs(std - (2 / 576) ** 0.5) < 0.01
