"""Distillation/CE losses by hand; optimiser groups and the poly schedule."""

from __future__ import annotations

import math

import pytest
import torch

from hdmnet.model.hdmnet import build_hdmnet
from hdmnet.model.losses import distillation_loss, gt_teacher, kl_distill, segmentation_ce
from hdmnet.model.optim import (
    build_hdmnet_optimizer,
    build_pspnet_optimizer,
    poly_lr,
    set_poly_lr,
)
from hdmnet.model.pspnet import build_pspnet


def test_kl_is_zero_when_student_equals_teacher():
    torch.manual_seed(0)
    x = torch.randn(3, 5, 5)
    assert abs(float(kl_distill(x, x.clone()))) < 1e-6
    # A chain of identical maps at one size, taught by the matching ground truth, costs 0.
    mask = torch.zeros(1, 4, 4, dtype=torch.long)
    mask[0, 1:3, 1:3] = 1
    teacher = gt_teacher(mask)
    assert abs(float(distillation_loss([teacher, teacher, teacher], mask))) < 1e-6


def test_kl_by_hand():
    teacher = torch.tensor([[[0.0, math.log(3.0)]]])  # softmax -> [0.25, 0.75]
    student = torch.tensor([[[0.0, 0.0]]])  # uniform
    expected = 0.25 * math.log(0.25 / 0.5) + 0.75 * math.log(0.75 / 0.5)
    assert math.isclose(float(kl_distill(teacher, student)), expected, rel_tol=1e-5)


def test_gt_teacher_and_resizing():
    mask = torch.tensor([[[1, 0], [255, 1]]])
    t = gt_teacher(mask)
    assert t.tolist() == [[[1.0, -1e9], [-1e9, 1.0]]]
    # The teacher is resized bilinearly to the student size before the softmax.
    student = torch.zeros(1, 1, 1)
    assert abs(float(kl_distill(t, student))) < 1e-6  # one position: both softmaxes are 1


def test_distillation_mean_over_maps_and_teacher_detached():
    mask = torch.zeros(1, 8, 8, dtype=torch.long)
    mask[0, :4] = 1
    maps = [torch.randn(1, 2, 2, requires_grad=True), torch.randn(1, 4, 4, requires_grad=True)]
    loss = distillation_loss(maps, mask)
    expected = (kl_distill(gt_teacher(mask), maps[0]) + kl_distill(maps[0], maps[1])) / 2
    assert torch.allclose(loss, expected)
    loss.backward()
    # maps[0] gets gradient only as a student (as teacher it is detached).
    g0 = maps[0].grad.clone()
    maps[0].grad = None
    kl_distill(gt_teacher(mask), maps[0]).div(2).backward()
    assert torch.allclose(maps[0].grad, g0)


def test_segmentation_ce_ignores_255():
    logits = torch.tensor([[[[2.0, 0.0]], [[0.0, 5.0]]]])  # 1x2x1x2
    target = torch.tensor([[[0, 255]]])
    assert math.isclose(
        float(segmentation_ce(logits, target)), math.log(1 + math.exp(-2)), rel_tol=1e-6
    )
    with pytest.raises(ValueError, match="differ in size"):
        segmentation_ce(logits, torch.zeros(1, 3, 3, dtype=torch.long))


def test_hdmnet_optimizer_groups():
    model = build_hdmnet("small", 15, 5, embed_dim=16)
    opt = build_hdmnet_optimizer(model, lr=1e-4)
    groups = {g["name"]: g for g in opt.param_groups}
    assert list(groups) == [
        "transformer",
        "down_supp",
        "down_query",
        "supp_merge",
        "query_merge",
        "gram_merge",
        "cls_merge",
    ]
    assert groups["transformer"]["lr"] == pytest.approx(1e-4)
    assert all(groups[n]["lr"] == pytest.approx(1e-3) for n in list(groups)[1:])
    assert opt.defaults["weight_decay"] == 0.01 and opt.defaults["betas"] == (0.9, 0.999)
    trained = {id(p) for p in model.parameters() if p.requires_grad}
    grouped = {id(p) for g in opt.param_groups for p in g["params"]}
    kshot = {id(p) for p in model.kshot_rw.parameters()}
    assert grouped == trained - kshot  # official: kshot_rw requires grad but is not optimised
    base = set_poly_lr(opt, 1e-4, 50, 100)
    assert base == pytest.approx(1e-4 * 0.5**0.9)
    assert groups["down_supp"]["lr"] == pytest.approx(10 * base)


def test_pspnet_optimizer_and_poly_errors():
    model = build_pspnet("small", 16)
    opt = build_pspnet_optimizer(model, lr=2.5e-4)
    assert [g["lr"] for g in opt.param_groups] == pytest.approx([2.5e-4, 2.5e-3])
    n_params = sum(p.numel() for g in opt.param_groups for p in g["params"])
    assert n_params == sum(p.numel() for p in model.parameters())
    assert poly_lr(1.0, 0, 10) == 1.0 and poly_lr(1.0, 10, 10) == 0.0
    with pytest.raises(ValueError, match="curr_iter"):
        poly_lr(1.0, 11, 10)


def test_pspnet_adamw_keeps_the_groups_and_decouples_weight_decay():
    model = build_pspnet("small", 16)
    opt = build_pspnet_optimizer(model, lr=2e-3, head_scale=1.0, weight_decay=0.01, kind="adamw")
    assert isinstance(opt, torch.optim.AdamW)
    assert [g["lr"] for g in opt.param_groups] == pytest.approx([2e-3, 2e-3])
    assert all(g["weight_decay"] == 0.01 and g["betas"] == (0.9, 0.999) for g in opt.param_groups)
    # The poly schedule drives AdamW's groups as it drives SGD's.
    assert set_poly_lr(opt, 2e-3, 50, 100) == pytest.approx(2e-3 * 0.5**0.9)
    with pytest.raises(ValueError, match=r"'adam'.*sgd"):
        build_pspnet_optimizer(model, lr=1e-3, kind="adam")
