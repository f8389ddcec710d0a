"""Training and evaluation throughput of HDMNet, one command for the day a GPU is available.

    python benchmarks/gpu.py                        # CUDA: paper sizes, every variant, < 10 min
    python benchmarks/gpu.py --device cpu --small   # the same code on CPU at toy sizes (CI)

For each dataset size (PASCAL 473 px, COCO 633 px; ``--small``: 33 and 41 px with the small
backbone at the demo's widths, 1 thread), shot count (1, 5) and variant it measures:

- train iterations/s: forward, the losses, backward and an AdamW step on ``--train-batch``
  episodes (default 4, BatchNorm frozen as in meta-training);
- eval episodes/s: an eval-mode forward of ``--eval-batch`` episodes (default 1, as the
  official test loop);
- peak memory of each (CUDA: ``max_memory_allocated``; not measured on CPU).

Variants: ``fp32`` (the default model: BatchNorm-folded frozen encoder, float32 everywhere),
``bf16`` (``model.bf16``: frozen encoder in bfloat16, on CUDA the meta learner under bfloat16
autocast), ``channels_last`` (``model.channels_last``) and ``compile`` (the frozen encoder through
``torch.compile``, backend ``--compile-backend``: inductor, or with ``--small`` ``eager``, for
the first size and shot count only, to check the wiring in seconds).

Numeric checks on one eval episode: fp32 against the official forward
(``benchmarks/official_style.py``) must agree within 1e-4 with no argmax flip where the
reference's margin exceeds 1e-4 (exit status 1 otherwise); every other variant against fp32
(max abs difference of the final output, share of pixels with the same argmax).

Random weights (speed does not depend on them). Results: a JSON file (``--json``, default
``gpu-<device>.json`` in the current folder) and a printed table. ``--budget`` (seconds, default
540) bounds the total: measurements that no longer fit are recorded as skipped.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

import official_style as reference
from forward import argmax_check, make_episode
from hdmnet.model.hdmnet import HDMNet, build_hdmnet
from hdmnet.model.optim import build_hdmnet_optimizer

VARIANTS = ("fp32", "bf16", "channels_last", "compile")
PAPER_SIZES = {"pascal": 473, "coco": 633}
SMALL_SIZES = {"pascal": 33, "coco": 41}


def build(backbone: str, shots: int, device: torch.device, small: bool) -> HDMNet:
    torch.manual_seed(0)
    # --small: the demo's CPU model (one block per stage, an eighth of the widths).
    kwargs = {"embed_dim": 16, "blocks": (1, 1, 1, 1), "width": 0.125} if small else {}
    model = build_hdmnet(backbone, 15, shots, **kwargs).to(device)
    with torch.no_grad():  # non-trivial ensemble weights: every path counts in the checks
        model.gram_merge.weight.copy_(torch.tensor([1.0, 0.3]).view(1, 2, 1, 1))
        model.cls_merge.weight.copy_(torch.tensor([1.0, 0.5]).view(1, 2, 1, 1))
    return model.eval()


def configure(model: HDMNet, variant: str, compile_backend: str) -> HDMNet:
    return model.configure_inference(
        channels_last=variant == "channels_last",
        bf16=variant == "bf16",
        compile_backend=compile_backend if variant == "compile" else None,
    )


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(
    fn: Callable[[], Any], items: int, warmup: int, iters: int, device: torch.device
) -> dict[str, Any]:
    """Items per second over ``iters`` calls after ``warmup`` calls, and the peak memory."""
    for _ in range(warmup):
        fn()
    sync(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    start = time.perf_counter()
    for _ in range(iters):
        fn()
    sync(device)
    seconds = time.perf_counter() - start
    peak = torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None
    return {"per_second": items * iters / seconds, "seconds": seconds, "peak_mb": peak}


def train_fn(model: HDMNet, ep: dict[str, Any]) -> Callable[[], float]:
    optimizer = build_hdmnet_optimizer(model, 1e-6)

    def step() -> float:
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

    return step


def eval_fn(model: HDMNet, ep: dict[str, Any]) -> Callable[[], Any]:
    def forward() -> Any:
        model.eval()
        return model(ep["query"], ep["supports"], ep["support_masks"])

    return forward


def checks(
    model: HDMNet, ep: dict[str, Any], variants: Sequence[str], compile_backend: str
) -> dict[str, Any]:
    """fp32 against the official forward; every other variant against fp32."""
    args = (ep["query"], ep["supports"], ep["support_masks"])
    configure(model, "fp32", compile_backend)
    fp32 = model.eval()(*args)
    ref = reference.eval_forward(model, *args, grad=False)
    out: dict[str, Any] = {
        "fp32_vs_official": {
            "max_abs_diff": max(
                float((getattr(fp32, n) - getattr(ref, n)).abs().max()) for n in ("final", "meta")
            ),
            **argmax_check(fp32.final, ref.final),
        }
    }
    for variant in variants:
        if variant == "fp32":
            continue
        configure(model, variant, compile_backend)
        got = model.eval()(*args)
        out[variant] = {
            "max_abs_diff_final": float((got.final.float() - fp32.final).abs().max()),
            **argmax_check(got.final.float(), fp32.final),
        }
    configure(model, "fp32", compile_backend)
    return out


def run(args: argparse.Namespace) -> dict[str, Any]:
    device = torch.device(args.device)
    sizes = SMALL_SIZES if args.small else PAPER_SIZES
    backbone = "small" if args.small else args.backbone
    started = time.perf_counter()
    rows: list[dict[str, Any]] = []
    numeric: dict[str, Any] = {}
    for dataset, size in sizes.items():
        for shots in args.shots:
            model = build(backbone, shots, device, args.small)
            train_ep = make_episode(args.train_batch, shots, size, device)
            eval_ep = make_episode(args.eval_batch, shots, size, device)
            key = f"{dataset}-{size}px-{shots}shot"
            # Tracing for torch.compile takes seconds per model and shape: --small (a wiring
            # check) compiles for the first configuration only.
            variants = list(args.variants)
            if args.small and numeric and "compile" in variants:
                variants.remove("compile")
            numeric[key] = checks(model, eval_ep, variants, args.compile_backend)
            for variant in args.variants:
                for mode in ("train", "eval"):
                    row = {
                        "dataset": dataset,
                        "size": size,
                        "shots": shots,
                        "variant": variant,
                        "mode": mode,
                    }
                    if variant not in variants:
                        rows.append({**row, "skipped": "--small compiles the first size only"})
                        continue
                    if time.perf_counter() - started > args.budget:
                        rows.append({**row, "skipped": "time budget"})
                        continue
                    configure(model, variant, args.compile_backend)
                    if mode == "train":
                        fn, items = train_fn(model, train_ep), args.train_batch
                    else:
                        fn, items = eval_fn(model, eval_ep), args.eval_batch
                    try:
                        row.update(measure(fn, items, args.warmup, args.iters, device))
                    except RuntimeError as error:  # e.g. out of memory: record and go on
                        row["error"] = str(error).splitlines()[0][:200]
                        if device.type == "cuda":
                            torch.cuda.empty_cache()
                    rows.append(row)
                    print(format_row(row), flush=True)
            configure(model, "fp32", args.compile_backend)
            del model
    return {
        "device": describe(device),
        "torch": torch.__version__,
        "args": {
            k: v if isinstance(v, int | float | list) else str(v) for k, v in vars(args).items()
        },
        "seconds": time.perf_counter() - started,
        "rows": rows,
        "checks": numeric,
    }


def describe(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


def format_row(row: dict[str, Any]) -> str:
    head = (
        f"{row['dataset']:6s} {row['size']:4d}px {row['shots']} shot  {row['variant']:13s} "
        f"{row['mode']:5s}"
    )
    if "skipped" in row:
        return f"{head}  skipped ({row['skipped']})"
    if "error" in row:
        return f"{head}  error: {row['error']}"
    unit = "it/s" if row["mode"] == "train" else "episodes/s"
    peak = "" if row["peak_mb"] is None else f"  peak {row['peak_mb']:.0f} MB"
    return f"{head}  {row['per_second']:8.2f} {unit}{peak}"


def format_checks(numeric: dict[str, Any]) -> list[str]:
    lines = []
    for key, entry in numeric.items():
        ref = entry["fp32_vs_official"]
        parts = [
            f"fp32 vs official: max diff {ref['max_abs_diff']:.1e}, "
            f"{ref['argmax_flips_beyond_margin']} flip(s) beyond 1e-4"
        ]
        for variant, v in entry.items():
            if variant != "fp32_vs_official":
                parts.append(
                    f"{variant}: diff {v['max_abs_diff_final']:.1e}, argmax "
                    f"{100 * v['argmax_agreement']:.3f}%"
                )
        lines.append(f"{key}: " + "; ".join(parts))
    return lines


def numeric_ok(numeric: dict[str, Any]) -> bool:
    return all(
        e["fp32_vs_official"]["max_abs_diff"] < 1e-4
        and e["fp32_vs_official"]["argmax_flips_beyond_margin"] == 0
        for e in numeric.values()
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--small", action="store_true", help="small backbone, toy sizes")
    parser.add_argument("--backbone", default="resnet50")
    parser.add_argument("--shots", type=int, nargs="+", default=[1, 5])
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=VARIANTS)
    parser.add_argument("--train-batch", type=int, help="episodes per step (4; --small 2)")
    parser.add_argument("--eval-batch", type=int, default=1)
    parser.add_argument("--warmup", type=int, help="calls before timing (2; --small 0)")
    parser.add_argument("--iters", type=int, help="timed calls (5; --small 1)")
    parser.add_argument("--compile-backend", help="inductor (--small: eager)")
    parser.add_argument("--threads", type=int, help="CPU threads (2; --small 1)")
    parser.add_argument("--budget", type=float, default=540.0, help="seconds")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    # --small checks that everything runs, not speed: no warm-up, one timed call.
    args.warmup = args.warmup if args.warmup is not None else (0 if args.small else 2)
    args.train_batch = args.train_batch or (2 if args.small else 4)
    args.threads = args.threads or (1 if args.small else 2)
    args.iters = args.iters if args.iters is not None else (1 if args.small else 5)
    if args.compile_backend is None:
        args.compile_backend = "eager" if args.small else "inductor"
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print("no CUDA device: run with --device cpu (add --small for toy sizes)", file=sys.stderr)
        return 2
    torch.set_num_threads(args.threads)
    if args.device.startswith("cuda"):
        torch.backends.cudnn.benchmark = True
    print(
        f"HDMNet throughput on {args.device}, torch {torch.__version__}; variants "
        f"{', '.join(args.variants)}; train batch {args.train_batch}, eval batch "
        f"{args.eval_batch}; budget {args.budget:.0f} s; load average "
        f"{'/'.join(f'{x:.1f}' for x in os.getloadavg())}",
        flush=True,
    )
    result = run(args)
    for line in format_checks(result["checks"]):
        print(line)
    ok = numeric_ok(result["checks"])
    result["numeric_ok"] = ok
    path = args.json or Path(f"gpu-{torch.device(args.device).type}.json")
    path.write_text(json.dumps(result, indent=2))
    print(f"{len(result['rows'])} measurements in {result['seconds']:.0f} s; wrote {path}")
    if not ok:
        print("FAIL: fp32 does not match the official forward", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
