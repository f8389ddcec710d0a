"""The benchmarks' reference and entry points: numbers checked, never timings.

``benchmarks/official_style.py`` is the official forward rewritten on our weights; the speed
figures are only honest if it computes what the official code computes and costs what it costs
structurally (one backbone pass per image, dense matching). Checked here on the small backbone.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

from hdmnet.model.hdmnet import build_hdmnet

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"
sys.path.insert(0, str(BENCH))

import official_style as reference  # noqa: E402


def episode(batch: int, shots: int, size: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    query = torch.randn(batch, 3, size, size, generator=g)
    supports = torch.randn(batch, shots, 3, size, size, generator=g)
    masks = (torch.rand(batch, shots, size, size, generator=g) > 0.6).long()
    masks[..., :3, :] = 255
    masks[0, 0] = 0  # a shot without foreground
    query_mask = (torch.rand(batch, size, size, generator=g) > 0.5).long()
    base_mask = torch.randint(0, 16, (batch, size, size), generator=g)
    return query, supports, masks, query_mask, base_mask


def model_for(shots: int, seed: int = 0):
    torch.manual_seed(seed)
    model = build_hdmnet("small", 15, shots, embed_dim=16)
    with torch.no_grad():  # non-trivial ensemble weights, so every path counts
        model.gram_merge.weight.copy_(torch.tensor([1.0, 0.3]).view(1, 2, 1, 1))
        model.cls_merge.weight.copy_(torch.tensor([1.0, 0.5]).view(1, 2, 1, 1))
        if model.kshot_rw is not None:
            for p in model.kshot_rw.parameters():
                p.normal_(0, 0.5)
    return model


@pytest.mark.parametrize("shots", [1, 5])
def test_reference_equals_our_model_in_eval(shots):
    model = model_for(shots).eval()
    query, supports, masks, _, _ = episode(2, shots, 73)
    ours = model(query, supports, masks)
    for grad in (True, False):
        ref = reference.eval_forward(model, query, supports, masks, grad=grad)
        for a, b in zip(
            (*ours[:3], *ours.correlations), (*ref[:3], *ref.correlations), strict=True
        ):
            assert a.shape == b.shape
            assert float((a - b.detach()).abs().max()) < 1e-4
        assert torch.equal(ours.final.argmax(1), ref.final.argmax(1))
        assert ref.final.requires_grad == grad  # the official test loop records a graph


@pytest.mark.parametrize("shots", [1, 3])
def test_reference_training_losses_and_gradients_equal_ours(shots):
    model = model_for(shots, seed=1).train()
    for m in model.modules():  # same values without dropout's random draws
        if isinstance(m, torch.nn.Dropout | torch.nn.Dropout2d):
            m.eval()
    query, supports, masks, query_mask, base_mask = episode(2, shots, 65, seed=2)
    ids = torch.tensor([3, 11])
    params = [p for p in model.parameters() if p.requires_grad]
    ours = model(query, supports, masks, query_mask, base_mask, ids).losses
    ref = reference.train_losses(model, query, supports, masks, query_mask, base_mask, ids)
    for key in ("main", "distill", "base", "total"):
        got, want = float(ours[key].detach()), float(ref[key].detach())
        assert got == pytest.approx(want, rel=1e-5, abs=1e-6), key
    g_ours = torch.autograd.grad(ours["total"], params, allow_unused=True)
    g_ref = torch.autograd.grad(ref["total"], params, allow_unused=True)
    for a, b in zip(g_ours, g_ref, strict=True):
        assert (a is None) == (b is None)
        if a is not None:
            assert torch.allclose(a, b, rtol=1e-4, atol=1e-6)


def test_reference_passes_each_image_through_the_backbone_once():
    model = model_for(5).eval()
    query, supports, masks, _, _ = episode(2, 5, 41)
    with reference.count_backbone_passes(model) as passes:
        reference.eval_forward(model, query, supports, masks, grad=False)
    assert passes[0] == 2 * (1 + 5)
    layer0_batches = []
    hook = model.layer0.register_forward_pre_hook(
        lambda _m, args: layer0_batches.append(args[0].shape[0])
    )
    reference.eval_forward(model, query, supports, masks, grad=False)
    hook.remove()
    assert layer0_batches == [2, 10]  # the query batch, then all supports in one call


def test_reference_matching_is_dense():
    """The matching mask the reference builds is the official dense [B*heads, Nq, K*Ls] one."""
    model = model_for(2).eval()
    query, supports, masks, _, _ = episode(1, 2, 41)
    seen = []
    original = reference.attention

    def spy(proj, heads, q, kv, mask):
        if mask is not None:
            seen.append((tuple(q.shape), tuple(kv.shape), tuple(mask.shape)))
        return original(proj, heads, q, kv, mask)

    reference.attention = spy
    try:
        reference.eval_forward(model, query, supports, masks, grad=False)
    finally:
        reference.attention = original
    # finest stage: 6x6 query tokens against 2 shots x 36 support tokens, mask [B, Nq, K*Ls]
    assert seen[-1] == ((1, 36, 16), (1, 72, 16), (1, 36, 72))


def test_gpu_benchmark_runs_on_cpu_at_toy_sizes(tmp_path):
    """``benchmarks/gpu.py --device cpu --small``: the GPU benchmark's code path, kept working."""
    import json
    import os
    import subprocess

    out = tmp_path / "gpu.json"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [sys.executable, str(BENCH / "gpu.py"), "--device", "cpu", "--small", "--json", str(out)],
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(out.read_text())
    assert result["numeric_ok"] is True
    rows = result["rows"]
    assert len(rows) == 2 * 2 * 4 * 2  # sizes x shots x variants x (train, eval)
    measured = [r for r in rows if "per_second" in r]
    assert {r["variant"] for r in measured} == {"fp32", "bf16", "channels_last", "compile"}
    assert all(r["per_second"] > 0 for r in measured)
    assert not any("error" in r for r in rows)
    skipped = [r for r in rows if "skipped" in r]
    assert all(r["variant"] == "compile" for r in skipped) and len(skipped) == 6
    for check in result["checks"].values():
        ref = check["fp32_vs_official"]
        assert ref["max_abs_diff"] < 1e-4 and ref["argmax_flips_beyond_margin"] == 0
        assert check["channels_last"]["max_abs_diff_final"] < 1e-4
        assert check["bf16"]["argmax_agreement"] > 0.99
    assert "fp32 vs official" in done.stdout and "episodes/s" in done.stdout
