"""Backbone shapes and ImageNet weight loading; the PSPNet base learner."""

from __future__ import annotations

import pytest
import torch

from hdmnet.model.backbone import (
    VGG16BN,
    VGG_SLICES,
    ResNet,
    build_backbone,
    load_imagenet_weights,
)
from hdmnet.model.pspnet import build_pspnet
from hdmnet.model.weights import CheckpointError


def test_resnet50_output_stride_8_and_channels():
    net = build_backbone("resnet50").eval()
    with torch.no_grad():
        outs = net(torch.randn(1, 3, 65, 65))
    assert [tuple(o.shape[1:]) for o in outs] == [
        (128, 17, 17),
        (256, 17, 17),
        (512, 9, 9),
        (1024, 9, 9),
        (2048, 9, 9),
    ]
    conv2 = net.layer3[0].conv2
    assert conv2.dilation == (2, 2) and conv2.padding == (2, 2) and conv2.stride == (1, 1)
    assert net.layer4[2].conv2.dilation == (4, 4)
    assert net.layer3[0].downsample[0].stride == (1, 1)
    assert all(m.bias is None for m in net.modules() if isinstance(m, torch.nn.Conv2d))


def test_vgg_layers_and_sizes():
    net = VGG16BN(width=0.125).eval()
    with torch.no_grad():
        outs = net(torch.randn(1, 3, 64, 64))
    # layer2 ends with a max pool (stride 8); layer3 with another (stride 16); layer4 none.
    assert [o.shape[-1] for o in outs] == [32, 16, 8, 4, 4]
    assert [len(getattr(net, f"layer{i}")) for i in range(5)] == [b - a for a, b in VGG_SLICES]


def test_small_variant_is_the_same_class():
    net = build_backbone("small")
    assert isinstance(net, ResNet)
    assert net.channels == (64, 128, 256, 512)
    assert [len(getattr(net, f"layer{i}")) for i in range(1, 5)] == [1, 1, 1, 1]
    with pytest.raises(ValueError, match="only accepted for backbone 'small'"):
        build_backbone("resnet50", width=0.5)
    with pytest.raises(ValueError, match="unknown backbone"):
        build_backbone("resnet18")


def resnet_v2_state(net: ResNet) -> dict[str, torch.Tensor]:
    """Our small backbone's weights renamed to PSPNet's resnet50_v2 layout (plus an fc)."""
    stem = {0: "conv1", 1: "bn1", 3: "conv2", 4: "bn2", 6: "conv3", 7: "bn3"}
    out = {}
    for key, value in net.state_dict().items():
        if key.startswith("layer0."):
            _, idx, rest = key.split(".", 2)
            out[f"{stem[int(idx)]}.{rest}"] = value.clone()
        else:
            out[key] = value.clone()
    out["fc.weight"] = torch.zeros(1000, 512)
    out["fc.bias"] = torch.zeros(1000)
    return out


def test_load_resnet_v2_imagenet_weights(tmp_path):
    torch.manual_seed(0)
    source = build_backbone("small")
    path = tmp_path / "resnet_v2.pth"
    state = resnet_v2_state(source)
    # Files from old PyTorch versions have no BatchNorm num_batches_tracked: still accepted.
    state = {"module." + k: v for k, v in state.items() if not k.endswith("num_batches_tracked")}
    torch.save(state, path)
    model = build_pspnet("small", 16, pretrained=path)
    for key, value in source.state_dict().items():
        assert torch.equal(model.state_dict()[key], value), key


def test_load_torchvision_vgg_weights(tmp_path):
    torch.manual_seed(0)
    source = VGG16BN(width=0.125)
    state = {}
    for key, value in source.state_dict().items():
        layer, idx, rest = key.split(".", 2)
        start = VGG_SLICES[int(layer[-1])][0]
        state[f"features.{start + int(idx)}.{rest}"] = value.clone()
    state["classifier.0.weight"] = torch.zeros(10, 10)
    path = tmp_path / "vgg16_bn.pth"
    torch.save(state, path)
    target = VGG16BN(width=0.125)
    load_imagenet_weights(target, path)
    assert all(torch.equal(target.state_dict()[k], v) for k, v in source.state_dict().items())


def test_imagenet_loading_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"missing\.pth"):
        build_pspnet("small", 16, pretrained=tmp_path / "missing.pth")
    state = resnet_v2_state(build_backbone("small"))
    del state["layer2.0.conv1.weight"]
    state["layer1.0.conv1.weight"] = torch.zeros(3, 3, 1, 1)
    path = tmp_path / "bad.pth"
    torch.save(state, path)
    with pytest.raises(CheckpointError, match=r"missing keys: layer2\.0\.conv1\.weight") as err:
        build_pspnet("small", 16, pretrained=path)
    assert "layer1.0.conv1.weight: checkpoint (3, 3, 1, 1)" in str(err.value)


def test_pspnet_shapes_loss_and_heads():
    torch.manual_seed(0)
    model = build_pspnet("small", 16)
    x = torch.randn(2, 3, 57, 57)
    logits = model(x)
    assert tuple(logits.shape) == (2, 16, 57, 57)
    target = torch.randint(0, 16, (2, 57, 57))
    target[:, :5] = 255
    loss = model.loss(logits, target)
    loss.backward()
    assert torch.isfinite(loss) and model.cls[4].weight.grad is not None
    full = build_pspnet("resnet50", 16).state_dict()
    assert tuple(full["ppm.features.3.1.weight"].shape) == (512, 2048, 1, 1)
    assert tuple(full["cls.0.weight"].shape) == (512, 4096, 3, 3)
    assert tuple(full["cls.4.weight"].shape) == (16, 512, 1, 1)
    with pytest.raises(ValueError, match="num_classes"):
        build_pspnet("small", 1)
