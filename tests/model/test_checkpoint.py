"""Official, BAM and own checkpoints: loading, prefixes, metadata checks, clear errors."""

from __future__ import annotations

import pytest
import torch

from hdmnet.model.checkpoint import check_compatible, infer_meta, load_checkpoint, save_checkpoint
from hdmnet.model.hdmnet import build_hdmnet
from hdmnet.model.pspnet import build_pspnet
from hdmnet.model.weights import CheckpointError


def small(shot: int = 1, classes: int = 15, seed: int = 0):
    torch.manual_seed(seed)
    return build_hdmnet("small", classes, shot, embed_dim=16)


def same_state(a, b) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return list(sa) == list(sb) and all(torch.equal(sa[k], sb[k]) for k in sa)


@pytest.mark.parametrize("prefix", ["", "module."])
def test_official_hdmnet_checkpoint_loads(tmp_path, prefix):
    source = small(5, seed=1)
    path = tmp_path / "best.pth"
    state = {prefix + k: v for k, v in source.state_dict().items()}
    torch.save(
        {"epoch": 7, "state_dict": state, "optimizer": {"state": {}, "param_groups": []}}, path
    )
    target = small(5, seed=2)
    assert not same_state(source, target)
    ckpt = load_checkpoint(path, target, expected={"shot": 5, "dataset": "pascal"})
    assert same_state(source, target)
    assert ckpt["epoch"] == 7
    assert ckpt["meta"] == {"kind": "hdmnet", "shot": 5, "dataset": "pascal", "backbone": "small"}


def test_bam_pspnet_fills_the_base_learner(tmp_path):
    torch.manual_seed(3)
    psp = build_pspnet("small", 16)
    path = tmp_path / "psp.pth"
    torch.save(
        {"epoch": 1, "state_dict": {"module." + k: v for k, v in psp.state_dict().items()}}, path
    )
    model = small()
    meta_before = {
        k: v.clone() for k, v in model.state_dict().items() if k.startswith("transformer")
    }
    load_checkpoint(path, model, expected={"kind": "pspnet", "dataset": "pascal"})
    state = model.state_dict()
    assert torch.equal(state["layer2.0.conv1.weight"], psp.state_dict()["layer2.0.conv1.weight"])
    assert torch.equal(
        state["ppm.features.2.2.running_var"], psp.state_dict()["ppm.features.2.2.running_var"]
    )
    assert torch.equal(state["cls.1.weight"], psp.cls[1].weight)
    assert torch.equal(state["base_learnear.2.weight"], psp.cls[4].weight)
    assert torch.equal(state["base_learnear.2.bias"], psp.cls[4].bias)
    assert all(torch.equal(state[k], v) for k, v in meta_before.items())
    # The same through the method, from a bare state dict; and the base logits now agree.
    other = small(seed=9)
    other.load_base_learner(psp.state_dict())
    psp.eval()
    other.eval()
    x = torch.randn(1, 3, 41, 41)
    feats = other.encode_query(x)
    expected = psp.cls(psp.ppm(psp.layer4(psp.layer3(psp.layer2(psp.layer1(psp.layer0(x)))))))
    with torch.no_grad():
        assert torch.allclose(other.base_learnear(feats.feat5), expected, atol=1e-5)


def test_wrong_pspnet_is_refused_with_the_keys_named():
    psp = build_pspnet("small", 61)
    with pytest.raises(CheckpointError, match=r"base_learnear\.2\.weight: checkpoint \(61"):
        small().load_base_learner(psp.state_dict())


def test_own_checkpoint_round_trip_and_refusals(tmp_path):
    model = small(5, seed=4)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad])
    meta = {
        "kind": "hdmnet",
        "dataset": "pascal",
        "fold": 2,
        "shot": 5,
        "backbone": "small",
        "config": {"embed_dim": 16},
    }
    path = save_checkpoint(tmp_path / "sub" / "model.pth", model, meta, epoch=3, optimizer=opt)
    assert not list(path.parent.glob(".*.tmp"))
    target = small(5, seed=5)
    ckpt = load_checkpoint(path, target, expected={"dataset": "pascal", "fold": 2, "shot": 5})
    assert same_state(model, target)
    assert ckpt["meta"]["config"] == {"embed_dim": 16} and ckpt["epoch"] == 3
    assert "optimizer" in ckpt
    with pytest.raises(
        CheckpointError, match=r"fold: .* has 2, expected 1; shot: .* has 5, expected 1"
    ):
        load_checkpoint(path, small(1), expected={"fold": 1, "shot": 1})
    with pytest.raises(CheckpointError, match=r"dataset: .* has 'pascal', expected 'coco'"):
        load_checkpoint(path, expected={"dataset": "coco"})


def test_strict_loading_lists_missing_and_unexpected(tmp_path):
    path = tmp_path / "one_shot.pth"
    torch.save({"state_dict": small(1).state_dict()}, path)
    with pytest.raises(CheckpointError, match=r"missing keys: kshot_rw\.0\.weight"):
        load_checkpoint(path, small(5))
    path5 = tmp_path / "five_shot.pth"
    torch.save({"state_dict": small(5).state_dict()}, path5)
    with pytest.raises(CheckpointError, match=r"unexpected keys: kshot_rw\.0\.weight"):
        load_checkpoint(path5, small(1))
    with pytest.raises(FileNotFoundError, match="nope"):
        load_checkpoint(tmp_path / "nope.pth")
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="cannot read checkpoint"):
        load_checkpoint(tmp_path / "junk.pth")


def test_infer_meta_and_check_compatible():
    meta = infer_meta(build_hdmnet("vgg16", 60, 1).state_dict())
    assert meta == {"kind": "hdmnet", "shot": 1, "dataset": "coco", "backbone": "vgg16"}
    check_compatible(meta, {"dataset": "coco", "fold": 3})  # fold unknown: not compared
    with pytest.raises(
        CheckpointError, match="backbone: checkpoint has 'vgg16', expected 'resnet50'"
    ):
        check_compatible(meta, {"backbone": "resnet50"})
    with pytest.raises(ValueError, match="lacks"):
        save_checkpoint("unused.pth", small(), {"dataset": "pascal"})
