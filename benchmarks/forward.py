"""Episode cost of HDMNet: our model against the official forward, side by side.

The reference is ``benchmarks/official_style.py``: the official release's forward rewritten
operation for operation on our model's weights (its docstring says what it computes and how it
was checked). Like the official code it passes every image through the backbone ONCE (the
query batch in one call, all supports of the batch in another), computes priors and matching on
the full dense matrices, and, as the official ``test.py`` does, evaluates without ``no_grad``
around the meta learner (``--reference-no-grad`` for the cheaper variant).

Two modes:

- ``eval`` (default): one eval-mode forward per episode, batch 1 (the official test loop).
- ``train``: one training step (forward, the official losses, backward, AdamW step) with
  ``--batch`` episodes (default 4), BatchNorm frozen as in meta-training.

Ours and the reference alternate within each repetition, with the same weights and inputs; the
table gives the median, the min and the spread (max - min) of each, and the median and range of
the per-repetition ratios. Before timing, the outputs are compared (eval: max abs difference of
final/meta/base logits and correlations, and argmax agreement; train: losses and gradients with
dropouts off). ``--parts`` also times the backbone alone (encoding the episode's images) for
both. Peak memory of one episode (or step) of each is measured in a fresh child process (CPU:
growth of the resident set's high-water mark; CUDA: ``max_memory_allocated``).

    python benchmarks/forward.py                          # ResNet-50, 473 px, 1 and 5 shots
    python benchmarks/forward.py --mode train --batch 4   # training step at 473 px
    python benchmarks/forward.py --backbone small --size 129 --reps 5

Measured figures and the commands that printed them are in README.md ("Tests and benchmarks").
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

import official_style as reference
from hdmnet.fileio import write_json
from hdmnet.model.hdmnet import HDMNet, build_hdmnet
from hdmnet.model.optim import build_hdmnet_optimizer

# Official code measured side by side with ours in issue 14 (2 threads, ResNet-50, 473 px).
OFFICIAL_EVAL_S = {1: 5.03, 5: 18.2}


def load() -> str:
    """The 1/5/15-minute load averages: other processes on the machine skew wall times."""
    return "/".join(f"{x:.1f}" for x in os.getloadavg())


def make_episode(batch: int, shots: int, size: int, device: torch.device) -> dict[str, Any]:
    """Random images, elliptic support masks (about a quarter of the image, 255 borders), a
    query mask, base-class labels and class ids."""
    g = torch.Generator().manual_seed(123)
    query = torch.randn(batch, 3, size, size, generator=g)
    supports = torch.randn(batch, shots, 3, size, size, generator=g)
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, size), torch.linspace(-1, 1, size), indexing="ij")

    def ellipse() -> torch.Tensor:
        cx, cy = ((torch.rand(2, generator=g) - 0.5) * 0.6).tolist()
        inside = ((xx - cx) / 0.6) ** 2 + ((yy - cy) / 0.5) ** 2
        mask = torch.zeros(size, size, dtype=torch.long)
        mask[inside <= 1.0] = 1
        mask[(inside > 1.0) & (inside <= 1.08)] = 255
        return mask

    masks = torch.stack([torch.stack([ellipse() for _ in range(shots)]) for _ in range(batch)])
    query_mask = torch.stack([ellipse() for _ in range(batch)])
    base_mask = torch.randint(0, 16, (batch, size, size), generator=g)
    class_ids = torch.randint(0, 15, (batch,), generator=g)
    episode = {
        "query": query,
        "supports": supports,
        "support_masks": masks,
        "query_mask": query_mask,
        "query_base_mask": base_mask,
        "class_ids": class_ids,
    }
    return {k: v.to(device) for k, v in episode.items()}


def build(args: argparse.Namespace, shots: int, device: torch.device) -> HDMNet:
    torch.manual_seed(0)
    model = build_hdmnet(args.backbone, 15, shots).to(device).eval()
    # Non-trivial merge weights so the ensemble path is exercised numerically.
    with torch.no_grad():
        model.gram_merge.weight.copy_(torch.tensor([1.0, 0.3]).view(1, 2, 1, 1))
        model.cls_merge.weight.copy_(torch.tensor([1.0, 0.5]).view(1, 2, 1, 1))
    return model


# -- the timed functions ------------------------------------------------------------------------


def eval_fns(model: HDMNet, ep: dict[str, Any], ref_grad: bool) -> dict[str, Callable[[], Any]]:
    args = (ep["query"], ep["supports"], ep["support_masks"])
    return {
        "ours": lambda: model.eval()(*args),
        "reference": lambda: reference.eval_forward(model, *args, grad=ref_grad),
    }


def train_fns(model: HDMNet, ep: dict[str, Any]) -> dict[str, Callable[[], Any]]:
    optimizer = build_hdmnet_optimizer(model, 1e-5)

    def ours() -> float:
        model.train()
        out = model(
            ep["query"],
            ep["supports"],
            ep["support_masks"],
            query_mask=ep["query_mask"],
            query_base_mask=ep["query_base_mask"],
            class_ids=ep["class_ids"],
        )
        optimizer.zero_grad(set_to_none=True)
        out.losses["total"].backward()
        optimizer.step()
        return float(out.losses["total"].detach())

    def ref() -> float:
        model.train()
        losses = reference.train_losses(
            model,
            ep["query"],
            ep["supports"],
            ep["support_masks"],
            ep["query_mask"],
            ep["query_base_mask"],
            ep["class_ids"],
        )
        optimizer.zero_grad(set_to_none=True)
        losses["total"].backward()
        optimizer.step()
        return float(losses["total"].detach())

    return {"ours": ours, "reference": ref}


def backbone_fns(model: HDMNet, ep: dict[str, Any]) -> dict[str, Callable[[], Any]]:
    """The backbone part alone: every image of the episode (batch) encoded once."""
    q, s, m = ep["query"], ep["supports"], ep["support_masks"]
    b, k = s.shape[:2]

    def ours() -> Any:
        model.eval()
        return model.encode_episode(q, s, m)

    def ref() -> Any:
        mask = (m.reshape(b * k, 1, *m.shape[-2:]) == 1).float()
        reference.extract(model, q)
        return reference.extract(model, s.reshape(b * k, *s.shape[2:]), mask)

    return {"ours": ours, "reference": ref}


# -- numeric checks -----------------------------------------------------------------------------


def eval_check(model: HDMNet, ep: dict[str, Any]) -> dict[str, Any]:
    args = (ep["query"], ep["supports"], ep["support_masks"])
    with reference.count_backbone_passes(model) as ours_passes:
        ours = model.eval()(*args)
    with reference.count_backbone_passes(model) as ref_passes:
        ref = reference.eval_forward(model, *args, grad=False)
    diffs = {
        n: float((getattr(ours, n).float() - getattr(ref, n).float()).abs().max())
        for n in ("final", "meta", "base")
    }
    diffs["correlations"] = max(
        float((x.float() - y.float()).abs().max())
        for x, y in zip(ours.correlations, ref.correlations, strict=True)
    )
    episodes = ep["query"].shape[0]
    return {
        "max_abs_diff": diffs,
        **argmax_check(ours.final, ref.final),
        # Counted at layer0 (ours may bypass the module on its fused path: then 0 there).
        "reference_backbone_passes_per_episode": ref_passes[0] / episodes,
        "ours_layer0_module_calls_per_episode": ours_passes[0] / episodes,
    }


def argmax_check(ours: torch.Tensor, ref: torch.Tensor, margin: float = 1e-4) -> dict[str, Any]:
    """Pixels whose argmax differs, in all and where the reference's decision margin (gap
    between its two scores) exceeds ``margin``: a 1e-4 agreement of the values can only flip
    pixels closer to a tie than that (random weights give exact ties now and then)."""
    flips = ours.argmax(1) != ref.argmax(1)
    gap = (ref[:, 1] - ref[:, 0]).abs()
    return {
        "argmax_agreement": 1.0 - float(flips.float().mean()),
        "argmax_flips": int(flips.sum()),
        "argmax_flips_beyond_margin": int((flips & (gap > margin)).sum()),
    }


def train_check(model: HDMNet, ep: dict[str, Any]) -> dict[str, Any]:
    """Losses and gradients of one training forward, dropouts off (same random draws)."""
    model.train()
    for m in model.modules():
        if isinstance(m, torch.nn.Dropout | torch.nn.Dropout2d):
            m.eval()
    params = [p for p in model.parameters() if p.requires_grad]
    out = model(
        ep["query"],
        ep["supports"],
        ep["support_masks"],
        query_mask=ep["query_mask"],
        query_base_mask=ep["query_base_mask"],
        class_ids=ep["class_ids"],
    )
    ours_grads = torch.autograd.grad(out.losses["total"], params, allow_unused=True)
    ref_losses = reference.train_losses(
        model,
        ep["query"],
        ep["supports"],
        ep["support_masks"],
        ep["query_mask"],
        ep["query_base_mask"],
        ep["class_ids"],
    )
    ref_grads = torch.autograd.grad(ref_losses["total"], params, allow_unused=True)
    model.train()
    pairs = [(a, b) for a, b in zip(ours_grads, ref_grads, strict=True) if b is not None]
    scale = max(float(b.abs().max()) for _, b in pairs)
    # Relative to the largest gradient entry: parameters whose gradients are rounding noise
    # (kshot_rw's, about 1e-13) would otherwise dominate a per-parameter ratio.
    grad_diff = max(float((a - b).abs().max()) for a, b in pairs if a is not None) / scale
    return {
        "loss_diff": {
            k: abs(float(out.losses[k].detach()) - float(ref_losses[k].detach()))
            for k in ref_losses
        },
        "max_grad_diff_relative_to_largest": grad_diff,
    }


# -- timing -------------------------------------------------------------------------------------


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def side_by_side(
    fns: dict[str, Callable[[], Any]], reps: int, device: torch.device
) -> dict[str, Any]:
    """Alternate the functions ``reps`` times (after one warm-up each); wall and CPU times."""
    for fn in fns.values():
        fn()
    wall: dict[str, list[float]] = {name: [] for name in fns}
    cpu: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(reps):
        for name, fn in fns.items():
            _sync(device)
            start, start_cpu = time.perf_counter(), time.process_time()
            fn()
            _sync(device)
            wall[name].append(time.perf_counter() - start)
            cpu[name].append(time.process_time() - start_cpu)
    out: dict[str, Any] = {}
    for name in fns:
        out[name] = summary(wall[name])
        out[name]["cpu_median_s"] = statistics.median(cpu[name])
    if "reference" in fns:
        ratios = [r / o for r, o in zip(wall["reference"], wall["ours"], strict=True)]
        out["ratio"] = {
            "median": statistics.median(ratios),
            "min": min(ratios),
            "max": max(ratios),
            "of_medians": out["reference"]["median_s"] / out["ours"]["median_s"],
            "cpu": out["reference"]["cpu_median_s"] / out["ours"]["cpu_median_s"],
        }
    return out


def summary(values: list[float]) -> dict[str, Any]:
    return {
        "median_s": statistics.median(values),
        "min_s": min(values),
        "spread_s": max(values) - min(values),
        "runs_s": values,
    }


# -- memory -------------------------------------------------------------------------------------


def memory_child(args: argparse.Namespace) -> None:
    """One episode (or training step) of ``args.memory_child``; prints its peak growth (MB)."""
    device = torch.device(args.device)
    shots = args.shots[0]
    model = build(args, shots, device)
    ep = make_episode(args.batch, shots, args.size, device)
    if args.mode == "eval":
        fn = eval_fns(model, ep, not args.reference_no_grad)[args.memory_child]
    else:
        fn = train_fns(model, ep)[args.memory_child]
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        fn()
        torch.cuda.synchronize(device)
        peak = (torch.cuda.max_memory_allocated(device) - base) / 2**20
    else:
        base = _peak_rss_kib()
        fn()
        peak = (_peak_rss_kib() - base) / 1024
    print(json.dumps({"peak_mb": peak}))


def _peak_rss_kib() -> int:
    """High-water mark of this process's resident set (KiB).

    ``VmHWM`` belongs to the current address space, whereas ``ru_maxrss`` of a child started by
    fork + exec also carries the parent's peak, which would hide the child's own.
    """
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def peak_memory(args: argparse.Namespace, which: str, shots: int) -> float:
    cmd = [
        sys.executable, __file__, "--memory-child", which, "--shots", str(shots),
        "--size", str(args.size), "--backbone", args.backbone, "--threads", str(args.threads),
        "--device", args.device, "--mode", args.mode, "--batch", str(args.batch),
    ]  # fmt: skip
    cmd += ["--reference-no-grad"] if args.reference_no_grad else []
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"memory child for {which} failed:\n{done.stderr}")
    return float(json.loads(done.stdout.strip().splitlines()[-1])["peak_mb"])


# -- main ---------------------------------------------------------------------------------------


def run_shots(args: argparse.Namespace, shots: int, device: torch.device) -> dict[str, Any]:
    model = build(args, shots, device)
    ep = make_episode(args.batch, shots, args.size, device)
    row: dict[str, Any] = {"shots": shots, "batch": args.batch}
    if args.mode == "eval":
        row["check"] = eval_check(model, ep)
        fns = eval_fns(model, ep, not args.reference_no_grad)
    else:
        row["check"] = train_check(model, ep)
        fns = train_fns(model, ep)
    row["time"] = side_by_side(fns, args.reps, device)
    if args.parts:
        row["backbone"] = side_by_side(backbone_fns(model, ep), args.reps, device)
    if not args.skip_memory:
        row["peak_mb"] = {name: peak_memory(args, name, shots) for name in ("ours", "reference")}
    return row


def format_row(args: argparse.Namespace, row: dict[str, Any]) -> str:
    t = row["time"]
    o, r, ratio = t["ours"], t["reference"], t["ratio"]
    line = (
        f"{row['shots']} shot(s), batch {row['batch']}: ours {o['median_s']:.2f} s "
        f"(min {o['min_s']:.2f}, spread {o['spread_s']:.2f}) | reference {r['median_s']:.2f} s "
        f"(min {r['min_s']:.2f}, spread {r['spread_s']:.2f}) | speed-up x{ratio['median']:.2f} "
        f"(per-rep range x{ratio['min']:.2f}-x{ratio['max']:.2f}, cpu time x{ratio['cpu']:.2f})"
    )
    check = row["check"]
    if args.mode == "eval":
        line += (
            f"\n    max abs diff {max(check['max_abs_diff'].values()):.2e}, argmax agreement "
            f"{100 * check['argmax_agreement']:.4f}% ({check['argmax_flips']} pixel(s) differ, "
            f"{check['argmax_flips_beyond_margin']} with a reference margin > 1e-4), reference "
            f"backbone passes per episode {check['reference_backbone_passes_per_episode']:g}"
        )
    else:
        line += (
            f"\n    loss diff {max(check['loss_diff'].values()):.2e}, max gradient diff "
            f"{check['max_grad_diff_relative_to_largest']:.2e} of the largest gradient entry"
        )
    if "backbone" in row:
        b = row["backbone"]
        line += (
            f"\n    backbone alone: ours {b['ours']['median_s']:.2f} s, reference "
            f"{b['reference']['median_s']:.2f} s (x{b['ratio']['median']:.2f}); decode and the "
            f"rest: ours {o['median_s'] - b['ours']['median_s']:.2f} s, reference "
            f"{r['median_s'] - b['reference']['median_s']:.2f} s"
        )
    if "peak_mb" in row:
        line += (
            f"\n    peak memory growth: ours {row['peak_mb']['ours']:.0f} MB, reference "
            f"{row['peak_mb']['reference']:.0f} MB"
        )
    if (
        args.mode == "eval"
        and args.backbone == "resnet50"
        and args.size == 473
        and args.batch == 1
        and row["shots"] in OFFICIAL_EVAL_S
    ):
        line += f"\n    official code measured in issue 14: {OFFICIAL_EVAL_S[row['shots']]:.2f} s"
    return line


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--mode", choices=["eval", "train"], default="eval")
    parser.add_argument("--backbone", default="resnet50")
    parser.add_argument("--size", type=int, default=473)
    parser.add_argument("--shots", type=int, nargs="+", default=[1, 5])
    parser.add_argument("--batch", type=int, help="episodes per call (eval 1, train 4)")
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="auto", help="cpu, cuda or auto")
    parser.add_argument("--reference-no-grad", action="store_true")
    parser.add_argument("--parts", action="store_true", help="also time the backbone alone")
    parser.add_argument("--skip-memory", action="store_true")
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument("--memory-child", choices=["ours", "reference"], help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.batch is None:
        args.batch = 1 if args.mode == "eval" else 4
    if args.device == "auto":
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    torch.set_num_threads(args.threads)
    if args.memory_child:
        memory_child(args)
        return

    device = torch.device(args.device)
    grad = "no_grad" if args.reference_no_grad else "autograd on, as the official test.py"
    print(
        f"HDMNet {args.mode} cost: backbone {args.backbone}, {args.size}x{args.size}, device "
        f"{device}, {args.threads} threads, {args.reps} interleaved repetitions, torch "
        f"{torch.__version__}; reference = official forward (benchmarks/official_style.py, "
        f"{grad}); load average {load()}",
        flush=True,
    )
    rows = []
    for shots in args.shots:
        row = run_shots(args, shots, device)
        rows.append(row)
        print(format_row(args, row), flush=True)
    print(f"load average at the end: {load()} (2 cores, shared)")
    if args.json:
        write_json(args.json, {"args": {k: str(v) for k, v in vars(args).items()}, "rows": rows})


if __name__ == "__main__":
    main()
