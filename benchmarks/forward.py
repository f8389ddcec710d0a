"""Episode cost of HDMNet: our forward vs. the straightforward (official-style) computation.

The reference composes our own modules the way the official implementation spends its time:
the query goes through the frozen backbone once, but every support image goes through it twice
(once for the features fed to the meta learner, once for the similarity priors), priors and
matching are computed on the full dense matrices, and everything runs under ``no_grad`` rather
than ``inference_mode``. With about 2.2 s per backbone pass this cost model gives the quoted
official figures (3 passes ~ 6 s for 1 shot, 11 passes ~ 28 s for 5 shots; MODEL.md section 6).

Ours: one backbone pass per image, foreground-only priors and matching, ``inference_mode``.
Both are timed side by side (interleaved repetitions), their outputs compared (max abs diff),
and the peak memory of one episode of each is measured in a fresh child process (CPU: growth
of the resident set's high-water mark; CUDA: ``max_memory_allocated``).

    python benchmarks/forward.py                       # ResNet-50, 473x473, 1 and 5 shots
    python benchmarks/forward.py --backbone small --size 129 --reps 5

Measured on the 2-core development machine (torch 2.13 CPU, 2 threads, median of 5):
1 shot 3.6 s vs reference 5.9 s (x1.65), 5 shots 11.5 s vs 24.5 s (x2.12); max abs diff
4.8e-7; peak memory growth 463 vs 733 MB and 1237 vs 2303 MB. Channels-last is slower on
this CPU (4.4 s for 1 shot); it is meant for CUDA.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

from hdmnet.fileio import write_json
from hdmnet.model.backbone import run_layers
from hdmnet.model.hdmnet import Features, HDMNet, HDMNetOutput, build_hdmnet

OFFICIAL_MS = {1: 6000.0, 5: 28000.0}  # MODEL.md section 6, 2 CPU threads, ResNet-50, 473


def make_episode(shots: int, size: int, device: torch.device) -> tuple[torch.Tensor, ...]:
    """Random images and elliptic support masks (about a quarter of the image, 255 borders)."""
    g = torch.Generator().manual_seed(123)
    query = torch.randn(1, 3, size, size, generator=g)
    supports = torch.randn(1, shots, 3, size, size, generator=g)
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, size), torch.linspace(-1, 1, size), indexing="ij")
    masks = torch.zeros(1, shots, size, size, dtype=torch.long)
    for k in range(shots):
        cx, cy = (torch.rand(2, generator=g) - 0.5) * 0.6
        inside = ((xx - cx) / 0.6) ** 2 + ((yy - cy) / 0.5) ** 2
        masks[0, k][inside <= 1.0] = 1
        masks[0, k][(inside > 1.0) & (inside <= 1.08)] = 255
    return query.to(device), supports.to(device), masks.to(device)


def build(args: argparse.Namespace, shots: int, device: torch.device) -> HDMNet:
    torch.manual_seed(0)
    model = build_hdmnet(args.backbone, 15, shots).to(device).eval()
    # Non-trivial merge weights so the ensemble path is exercised numerically.
    with torch.no_grad():
        model.gram_merge.weight.copy_(torch.tensor([1.0, 0.3]).view(1, 2, 1, 1))
        model.cls_merge.weight.copy_(torch.tensor([1.0, 0.5]).view(1, 2, 1, 1))
    return model


def ours(model: HDMNet, query: torch.Tensor, supports: torch.Tensor, masks: torch.Tensor):
    return model(query, supports, masks)


def _reference_features(model: HDMNet, image: torch.Tensor, mask: torch.Tensor | None) -> Features:
    with torch.no_grad():
        if mask is not None:
            image = image * (mask == 1).unsqueeze(1).to(image.dtype)
        outs = run_layers(model, image)
        feat5 = model.cls(model.ppm(outs[4]))
        layer2 = outs[2]
        if model.is_vgg:
            layer2 = torch.nn.functional.interpolate(
                layer2, size=outs[3].shape[-2:], mode="bilinear", align_corners=True
            )
    return Features(layer2, outs[3], outs[4], feat5, (image.shape[2], image.shape[3]))


def reference(
    model: HDMNet, query: torch.Tensor, supports: torch.Tensor, masks: torch.Tensor
) -> HDMNetOutput:
    """Official-style episode: supports through the backbone twice, dense priors/matching."""
    q = _reference_features(model, query, None)
    shots = []
    for k in range(supports.shape[1]):
        for_meta = _reference_features(model, supports[:, k], masks[:, k])
        for_prior = _reference_features(model, supports[:, k], masks[:, k])  # duplicate pass
        shots.append(
            Features(
                for_meta.layer2, for_meta.layer3, for_prior.layer4, for_prior.feat5, q.image_size
            )
        )
    model.set_foreground_sparsity(False)
    try:
        with torch.no_grad():
            return model._decode(q, shots, masks, None, None, None)
    finally:
        model.set_foreground_sparsity(True)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def max_abs_diff(a: HDMNetOutput, b: HDMNetOutput) -> dict[str, float]:
    names = ["final", "meta", "base"]
    diffs = {n: float((getattr(a, n).float() - getattr(b, n).float()).abs().max()) for n in names}
    diffs["correlations"] = max(
        float((x.float() - y.float()).abs().max())
        for x, y in zip(a.correlations, b.correlations, strict=True)
    )
    return diffs


def time_side_by_side(args: argparse.Namespace, shots: int, device: torch.device) -> dict:
    model = build(args, shots, device)
    if args.channels_last or args.bf16:
        model.configure_inference(channels_last=args.channels_last, bf16=args.bf16)
    episode = make_episode(shots, args.size, device)
    out_ours = ours(model, *episode)  # warm-up, and the outputs to compare
    out_ref = reference(model, *episode) if not args.skip_reference else None
    times: dict[str, list[float]] = {"ours": [], "reference": []}
    cpu: dict[str, list[float]] = {"ours": [], "reference": []}
    for _ in range(args.reps):
        for name, fn in (("ours", ours), ("reference", reference)):
            if name == "reference" and args.skip_reference:
                continue
            _sync(device)
            start, start_cpu = time.perf_counter(), time.process_time()
            fn(model, *episode)
            _sync(device)
            times[name].append((time.perf_counter() - start) * 1000.0)
            # CPU time of all threads: steadier than wall time on a shared machine.
            cpu[name].append((time.process_time() - start_cpu) * 1000.0)
    row = {
        "shots": shots,
        "ours_ms": statistics.median(times["ours"]),
        "ours_min_ms": min(times["ours"]),
        "ours_cpu_ms": statistics.median(cpu["ours"]),
        "ours_runs_ms": times["ours"],
        "fg_fraction": float((episode[2] == 1).float().mean()),
    }
    if out_ref is not None:
        row["reference_ms"] = statistics.median(times["reference"])
        row["reference_min_ms"] = min(times["reference"])
        row["reference_cpu_ms"] = statistics.median(cpu["reference"])
        row["reference_runs_ms"] = times["reference"]
        row["speedup"] = row["reference_ms"] / row["ours_ms"]
        row["max_abs_diff"] = max_abs_diff(out_ours, out_ref)
    return row


def memory_child(args: argparse.Namespace) -> None:
    """Run one episode of ``args.memory_child`` and print its peak-memory growth (MB) as JSON."""
    device = torch.device(args.device)
    model = build(args, args.shots[0], device)
    if args.memory_child == "ours" and (args.channels_last or args.bf16):
        model.configure_inference(channels_last=args.channels_last, bf16=args.bf16)
    episode = make_episode(args.shots[0], args.size, device)
    fn = ours if args.memory_child == "ours" else reference
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        fn(model, *episode)
        torch.cuda.synchronize(device)
        peak = (torch.cuda.max_memory_allocated(device) - base) / 2**20
    else:
        base = _peak_rss_kib()
        fn(model, *episode)
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
        "--device", args.device,
    ]  # fmt: skip
    cmd += ["--channels-last"] if args.channels_last else []
    cmd += ["--bf16"] if args.bf16 else []
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"memory child for {which} failed:\n{done.stderr}")
    return float(json.loads(done.stdout.strip().splitlines()[-1])["peak_mb"])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--backbone", default="resnet50")
    parser.add_argument("--size", type=int, default=473)
    parser.add_argument("--shots", type=int, nargs="+", default=[1, 5])
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="auto", help="cpu, cuda or auto")
    parser.add_argument("--channels-last", action="store_true")
    parser.add_argument("--bf16", action="store_true", help="bfloat16 autocast (ours only)")
    parser.add_argument("--skip-reference", action="store_true")
    parser.add_argument("--skip-memory", action="store_true")
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument("--memory-child", choices=["ours", "reference"], help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.device == "auto":
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    torch.set_num_threads(args.threads)
    if args.memory_child:
        memory_child(args)
        return

    device = torch.device(args.device)
    print(
        f"HDMNet episode cost: backbone {args.backbone}, {args.size}x{args.size}, device "
        f"{device}, {args.threads} threads, median of {args.reps} (interleaved), torch "
        f"{torch.__version__}"
    )
    rows = []
    for shots in args.shots:
        row = time_side_by_side(args, shots, device)
        if not args.skip_memory:
            row["ours_peak_mb"] = peak_memory(args, "ours", shots)
            if not args.skip_reference:
                row["reference_peak_mb"] = peak_memory(args, "reference", shots)
        rows.append(row)
        line = (
            f"{shots} shot(s): ours {row['ours_ms']:.0f} ms (min {row['ours_min_ms']:.0f}, "
            f"cpu {row['ours_cpu_ms']:.0f})"
        )
        if "reference_ms" in row:
            diff = max(row["max_abs_diff"].values())
            line += (
                f" | reference {row['reference_ms']:.0f} ms (min {row['reference_min_ms']:.0f}, "
                f"cpu {row['reference_cpu_ms']:.0f}) | speedup x{row['speedup']:.2f} "
                f"(cpu x{row['reference_cpu_ms'] / row['ours_cpu_ms']:.2f})"
                f" | max abs diff {diff:.2e}"
            )
        if "ours_peak_mb" in row:
            line += f" | peak MB ours {row['ours_peak_mb']:.0f}"
            if "reference_peak_mb" in row:
                line += f", reference {row['reference_peak_mb']:.0f}"
        if args.backbone == "resnet50" and args.size == 473 and shots in OFFICIAL_MS:
            line += f" | official (quoted) {OFFICIAL_MS[shots]:.0f} ms"
            line += f", x{OFFICIAL_MS[shots] / row['ours_ms']:.2f}"
        print(line, flush=True)
    if args.json:
        write_json(args.json, {"args": {k: str(v) for k, v in vars(args).items()}, "rows": rows})


if __name__ == "__main__":
    main()
