"""An ablation variant must change what it claims to change: ``fix_quirks`` (the K-shot
re-weighting trained and un-sorted properly) acts with several support shots and not at one,
which is why the ablation runs it at 5 shots (``ablation.kshot_variants``)."""

from __future__ import annotations

import pytest
import torch
from tests.model.test_hdmnet_forward import episode

from hdmnet.model.hdmnet import build_hdmnet


def outputs(shots: int, fix_quirks: bool) -> torch.Tensor:
    torch.manual_seed(0)
    model = build_hdmnet("small", 15, shots, embed_dim=16, fix_quirks=False).eval()
    weights = model.state_dict()
    model = build_hdmnet("small", 15, shots, embed_dim=16, fix_quirks=fix_quirks).eval()
    model.load_state_dict(weights)
    # A non-uniform re-weighting, and merge layers that use the weighted estimate (at their
    # initialisation [1, 0] they ignore it: training moves them), so that the quirks show.
    with torch.no_grad():
        for name, tensor in model.named_parameters():
            if name.startswith("kshot_rw"):
                tensor.copy_(torch.linspace(-1, 1, tensor.numel()).view_as(tensor))
            if name.startswith(("gram_merge", "cls_merge")):
                tensor.fill_(0.5)
    query, supports, masks, _, _ = episode(2, shots, 49, seed=3)
    with torch.no_grad():
        return model(query, supports, masks).final


@pytest.mark.parametrize("shots", [1, 5])
def test_fix_quirks_acts_with_several_shots_only(shots):
    plain, fixed = outputs(shots, False), outputs(shots, True)
    if shots == 1:
        assert torch.equal(plain, fixed)
    else:
        assert (plain - fixed).abs().max() > 1e-4
