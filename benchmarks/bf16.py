"""bfloat16 on this CPU: what ``model.bf16`` buys and what it changes.

    python benchmarks/bf16.py                      # the backbone at 473 px + the demo's evaluation
    python benchmarks/bf16.py --checkpoint results/.../best.pth --data data

First the CPU's bfloat16 support as ``lscpu`` lists it (``avx512_bf16``, ``amx_bf16``: oneDNN
uses them; without them bf16 is emulated and slower). Then, side by side in one process:

1. The frozen encoder (ResNet-50, ``--size`` 473 px, ``--threads`` 2, random weights): float32
   (folded, the default) and bfloat16, alternating ``--reps`` times; median and min per image,
   the ratio, the max difference of the features relative to their magnitude.
2. A whole evaluation: the demo's (the default preset: small backbone, 10 seeds x
   ``meta.pascal.test_episodes`` episodes of fold 0, 1 shot, the planned protocol), with a
   quickly trained model unless ``--checkpoint``; float32 then bfloat16 on the same episodes:
   wall time and ratio, mIoU of the final and the meta output and their change, and the share
   of pixels whose predicted label agrees, over every episode.
3. With ``--r50-episodes N``: the same evaluation with ResNet-50 at 473 px (random weights,
   so the timing and the agreement count, not the mIoU) on N episodes of the first seed.

Figures measured with it are in README.md ("Tests and benchmarks").
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

import evaluate as bench_eval
from hdmnet.config import load_params
from hdmnet.evaluate.metrics import binary_prediction
from hdmnet.evaluate.protocol import EpisodeRunner, ProtocolResult
from hdmnet.model import HDMNet


def cpu_flags() -> str:
    try:
        text = subprocess.run(["lscpu"], capture_output=True, text=True, check=False).stdout
    except OSError:
        return "lscpu not available"
    flags = next(
        (line.split(":", 1)[1].split() for line in text.splitlines() if "Flags" in line), []
    )
    found = [f for f in ("avx512_bf16", "amx_bf16", "amx_tile", "avx512f") if f in flags]
    return ", ".join(found) or "no AVX-512/AMX bfloat16 flags"


def backbone(args: argparse.Namespace) -> dict[str, Any]:
    model = bench_eval.random_model(load_params(args.params), "resnet50", 0, 1)
    image = torch.randn(1, 3, args.size, args.size, generator=torch.Generator().manual_seed(0))
    feats: dict[str, Any] = {}
    times: dict[str, list[float]] = {"fp32": [], "bf16": []}

    def encode(variant: str) -> Any:
        model.configure_inference(bf16=variant == "bf16")
        return model.encode_query(image)

    for variant in times:  # warm-up (builds the folded weights), and the features to compare
        feats[variant] = encode(variant)
    for _ in range(args.reps):
        for variant in times:
            start = time.perf_counter()
            encode(variant)
            times[variant].append(time.perf_counter() - start)
    model.configure_inference()
    rel = max(
        float((getattr(feats["bf16"], n) - getattr(feats["fp32"], n)).abs().max())
        / float(getattr(feats["fp32"], n).abs().max())
        for n in ("layer2", "layer3", "layer4", "feat5")
    )
    ratios = [a / b for a, b in zip(times["fp32"], times["bf16"], strict=True)]
    out = {
        v: {"median_s": statistics.median(t), "min_s": min(t), "runs_s": t}
        for v, t in times.items()
    }
    out["ratio_median"] = statistics.median(ratios)
    out["ratio_range"] = [min(ratios), max(ratios)]
    out["max_relative_feature_diff"] = rel
    print(
        f"frozen encoder, ResNet-50 at {args.size} px, {args.threads} threads, {args.reps} reps: "
        f"fp32 {out['fp32']['median_s']:.2f} s (min {out['fp32']['min_s']:.2f}), bf16 "
        f"{out['bf16']['median_s']:.2f} s (min {out['bf16']['min_s']:.2f}): x"
        f"{out['ratio_median']:.2f} (per-rep x{min(ratios):.2f}-x{max(ratios):.2f}); features "
        f"differ by up to {rel:.1e} of their magnitude",
        flush=True,
    )
    return out


def compare_evaluations(
    name: str, make_runner: Any, seeds: list[int], episodes: int
) -> dict[str, Any]:
    """fp32 then bf16 on the same episodes: times, mIoU, pixel agreement."""
    predictions: dict[tuple[int, int], np.ndarray] = {}
    agree = total = 0

    def keep(e: Any, decoded: Any) -> None:
        predictions[e.seed, e.index] = binary_prediction(decoded.logits["final"]).numpy()

    def compare(e: Any, decoded: Any) -> None:
        nonlocal agree, total
        pred = binary_prediction(decoded.logits["final"]).numpy()
        ref = predictions[e.seed, e.index]
        agree += int((pred == ref).sum())
        total += pred.size

    results: dict[str, ProtocolResult] = {}
    seconds: dict[str, float] = {}
    for variant, hook in (("fp32", keep), ("bf16", compare)):
        runner: EpisodeRunner = make_runner()
        runner.model.configure_inference(bf16=variant == "bf16")
        start = time.perf_counter()
        results[variant] = runner.run(seeds, episodes, desc=f"{name} {variant}", on_episode=hook)
        seconds[variant] = time.perf_counter() - start
        runner.model.configure_inference()
    miou = {v: {o: bench_eval.miou(r, o) for o in ("final", "meta")} for v, r in results.items()}
    out = {
        "seconds": seconds,
        "ratio": seconds["fp32"] / seconds["bf16"],
        "miou": miou,
        "miou_change": {o: miou["bf16"][o] - miou["fp32"][o] for o in ("final", "meta")},
        "pixel_agreement": agree / max(1, total),
        "episodes": len(seeds) * episodes,
    }
    print(
        f"{name}: {out['episodes']} episodes, fp32 {seconds['fp32']:.1f} s, bf16 "
        f"{seconds['bf16']:.1f} s (x{out['ratio']:.2f}); mIoU fp32 {miou['fp32']['final']:.2f} "
        f"-> bf16 {miou['bf16']['final']:.2f} ({out['miou_change']['final']:+.2f}; meta "
        f"{out['miou_change']['meta']:+.2f}); predictions agree on "
        f"{100 * out['pixel_agreement']:.3f}% of the pixels",
        flush=True,
    )
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--params", type=Path, default=bench_eval.ROOT / "params.yaml")
    parser.add_argument("--data", type=Path, help="prepared data folder (paths.data)")
    parser.add_argument("--checkpoint", type=Path, help="the demo's meta-learner checkpoint")
    parser.add_argument("--size", type=int, default=473)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--skip-backbone", action="store_true")
    parser.add_argument("--skip-demo", action="store_true")
    parser.add_argument("--r50-episodes", type=int, default=0)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    print(
        f"CPU bfloat16 support (lscpu): {cpu_flags()}; torch {torch.__version__}; load average "
        f"{bench_eval.load()}",
        flush=True,
    )
    figures: dict[str, Any] = {"cpu_flags": cpu_flags()}
    if not args.skip_backbone:
        figures["backbone"] = backbone(args)

    work = Path(tempfile.mkdtemp(prefix="hdmnet-bench-bf16-"))
    try:
        if not args.skip_demo or args.r50_episodes:
            params = load_params(
                args.params,
                [
                    "tracking.enabled=false",
                    f"paths.data={args.data or work / 'data'}",
                    f"paths.results={work / 'results'}",
                ],
            )
            if args.data is None:
                bench_eval.prepare_data(params)
            seeds = list(params.eval.seeds)
            ns = argparse.Namespace(fold=0, shot=1)
        if not args.skip_demo:
            path = args.checkpoint or bench_eval.quick_checkpoint(params, work, 0, 1)
            model = bench_eval.model_from_checkpoint(path, params)
            ns.size = params.meta.pascal.image_size
            figures["demo"] = compare_evaluations(
                "demo evaluation",
                lambda: bench_eval.runner(model, params, ns, params.eval.cache_mb),
                seeds,
                params.meta.pascal.test_episodes,
            )
        if args.r50_episodes:
            r50: HDMNet = bench_eval.random_model(params, "resnet50", 0, 1)
            ns.size = args.size
            figures["resnet50"] = compare_evaluations(
                f"ResNet-50 evaluation at {args.size} px",
                lambda: bench_eval.runner(r50, params, ns, params.eval.cache_mb),
                seeds[:1],
                args.r50_episodes,
            )
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(f"load average at the end: {bench_eval.load()} (2 cores, shared)")
    if args.json:
        import json

        args.json.write_text(json.dumps(figures, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
