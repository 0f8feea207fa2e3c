"""`python -m bench.inference`: stock diffusers against the worker's inference path, per option.

For each `--shape` (sd15: 512x512, sdxl: 1024x1024, 25 steps, batch 1; fp16 on CUDA, fp32 on
the CPU), on the project's random weights (bench/models.py), in one process:

- `stock`: diffusers' `StableDiffusionPipeline` / `StableDiffusionXLPipeline`
  `.from_pretrained(folder, dtype=...)`, default settings, `.to(device)`, called with the prompt;
- `none`: the worker's path with no option (`gpu_worker.inference.load_pipeline(..., ())` and
  `generate`: its own prompt encoding, scheduler per job, step callback), so that the cost of the
  path itself shows;
- each of `--options` alone (gpu_worker/acceleration.py), and `all`: every one of them together.

Same prompt, seeds, scheduler (`--scheduler`, Euler by default), steps and guidance for every
variant. Each variant is loaded (`load_s`), then warmed up: its first image (`first_s`, which
holds the compilation of a compiled variant: `compile_s` = first - p50) and a second one, both
left out. Then `--repeats` rounds; in each, every variant makes one image of the round's seed,
the order reversed every other round (ABBA); latencies wall-clock, per image (a PIL image out,
so the device has finished). Figures per variant: p50/p95/mean latency, images/s (images over
their summed time), speed-up over `stock` and over `none` (p50s), and the pixel difference
from `stock`'s image of the same seed (max and mean of |a - b| over RGB, 0-255).

`keep` lists the options whose speed-up over `none` is at least `--keep-threshold` (1.03):
"keep only what measures faster" (it says nothing on the CPU, where fp32 kernels differ from
the GPU's). `stock_latent_p50_s` (stock with `output_type="latent"`) shows what the VAE decode
and post-processing cost, i.e. what moving them off the critical path could win.

    python -m bench.inference --quick                 # CPU smoke: tiny model, 64x64, 4 steps
    python -m bench.inference --shape sd15 --shape sdxl   # the GPU run (bench/gpu_all.sh)

Prints a table per shape, then one JSON line last.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from bench import models
from bench.stats import percentile

PROMPT = "a lighthouse on a cliff in a storm, oil painting, dramatic light"
# The issue's goals (H100/H200): p50 seconds per image and speed-up over stock.
GOALS = {"sd15": (0.26, 1.8), "sdxl": (1.5, 1.6)}
CPU_OPTIONS = ("sdpa", "fuse_qkv", "channels_last")
GPU_OPTIONS = ("sdpa", "fuse_qkv", "channels_last", "compile")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.inference", description=__doc__.split("\n")[0]
    )
    models.add_arguments(parser)
    parser.add_argument("--steps", type=int, help="denoising steps (default: the shape's)")
    parser.add_argument("--size", type=int, help="width = height (default: the shape's)")
    parser.add_argument(
        "--options",
        help="comma list of acceleration options to measure alone and together "
        f"(default on CUDA {','.join(GPU_OPTIONS)}, on the CPU {','.join(CPU_OPTIONS)})",
    )
    parser.add_argument(
        "--variants",
        help="comma list to run instead of all: stock, none, an option, all (stock is always run)",
    )
    parser.add_argument("--scheduler", default="euler")
    parser.add_argument("--guidance", type=float, default=7.5)
    parser.add_argument("--seed", type=int, default=1000)
    parser.add_argument("--keep-threshold", type=float, default=1.03)
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    return models.settle(parser.parse_args(argv), repeats=5, quick_repeats=2)


@dataclass
class Variant:
    name: str
    options: tuple[str, ...] | None  # None: stock diffusers
    run: Any = None
    load_s: float = 0.0
    first_s: float = 0.0
    applied: dict[str, Any] = field(default_factory=dict)
    latencies: list[float] = field(default_factory=list)
    images: dict[int, np.ndarray] = field(default_factory=dict)


def load_stock(path: Path, device: Any, dtype: Any, scheduler: str) -> Any:
    """Plain diffusers: the folder's pipeline class, default settings, the job's scheduler."""
    import diffusers

    from gpu_worker.inference import SCHEDULERS
    from sdsaas.contract import Scheduler

    class_name = json.loads((path / "model_index.json").read_text())["_class_name"]
    pipeline = getattr(diffusers, class_name).from_pretrained(path, dtype=dtype).to(device)
    scheduler_class, options = SCHEDULERS[Scheduler(scheduler)]
    pipeline.scheduler = scheduler_class.from_config(pipeline.scheduler.config, **options)
    pipeline.set_progress_bar_config(disable=True)
    return pipeline


def make_variant(variant: Variant, path: Path, device: Any, args: argparse.Namespace) -> None:
    import torch

    from gpu_worker import acceleration, inference
    from sdsaas.contract import Scheduler

    width, height, steps = dims(args)
    started = time.perf_counter()
    if variant.options is None:
        dtype = torch.float16 if device.type == "cuda" else torch.float32
        pipeline = load_stock(path, device, dtype, args.scheduler)

        def run(seed: int, latent: bool = False) -> Any:
            # No negative prompt, as the worker's "": SDXL zeroes it (force_zeros_for_empty_prompt)
            # only when it is None, SD 1.x encodes "" either way.
            return pipeline(
                prompt=PROMPT,
                negative_prompt=None,
                width=width,
                height=height,
                num_inference_steps=steps,
                guidance_scale=args.guidance,
                generator=torch.Generator("cpu").manual_seed(seed),
                output_type="latent" if latent else "pil",
            ).images[0]

    else:
        loaded = inference.read_pipeline(str(path), device)
        loaded.to(device)
        done = acceleration.apply(
            loaded, variant.options, device, compile_cache_dir=args.compile_cache
        )
        variant.applied = {"options": list(done.options), "skipped": done.skipped}
        model = inference.LoadedModel(loaded)

        def run(seed: int, latent: bool = False) -> Any:
            request = inference.Request(
                prompt=PROMPT,
                negative_prompt="",
                width=width,
                height=height,
                steps=steps,
                guidance=args.guidance,
                scheduler=Scheduler(args.scheduler),
                num_outputs=1,
                seed=seed,
            )
            return inference.generate(model, request)[0]

    variant.run = run
    variant.load_s = round(time.perf_counter() - started, 3)


def dims(args: argparse.Namespace) -> tuple[int, int, int]:
    width, height, steps = models.SIZES[args.current_shape]
    if args.size:
        width = height = args.size
    return width, height, args.steps or steps


def timed(variant: Variant, seed: int) -> tuple[float, np.ndarray]:
    started = time.perf_counter()
    image = variant.run(seed)
    return time.perf_counter() - started, np.asarray(image, dtype=np.int16)


def variants_for(options: tuple[str, ...], wanted: list[str] | None) -> list[Variant]:
    from gpu_worker import acceleration

    every = [Variant("stock", None), Variant("none", ())]
    every += [Variant(name, (name,)) for name in options]
    if len(options) > 1:
        every.append(Variant("all", acceleration.canonical(options)))
    if wanted:
        every = [v for v in every if v.name == "stock" or v.name in wanted]
    return every


def run_shape(shape: str, device: Any, args: argparse.Namespace) -> dict[str, Any]:
    args.current_shape = shape
    width, height, steps = dims(args)
    fp16 = device.type == "cuda"
    path, build_s = models.ensure(shape, args.models, fp16=fp16)
    options = tuple(args.options.split(",")) if args.options else None
    if options is None:
        options = GPU_OPTIONS if device.type == "cuda" else CPU_OPTIONS
    wanted = args.variants.split(",") if args.variants else None
    variants = variants_for(options, wanted)
    print(f"\n{shape}: {width}x{height}, {steps} steps, {len(variants)} variants", flush=True)
    for variant in variants:
        make_variant(variant, path, device, args)
        variant.first_s, _ = timed(variant, args.seed - 1)  # compiles, if it compiles
        variant.first_s = round(variant.first_s, 3)
        timed(variant, args.seed - 2)
        print(f"  {variant.name:<16} loaded {variant.load_s:.2f} s, first {variant.first_s:.2f} s")
    for round_ in range(args.repeats):
        seed = args.seed + round_
        for variant in variants if round_ % 2 == 0 else variants[::-1]:
            seconds, image = timed(variant, seed)
            variant.latencies.append(seconds)
            variant.images[seed] = image
    stock = variants[0]
    latent = []
    for i in range(1 if args.quick else 3):
        started = time.perf_counter()
        stock.run(args.seed + i, latent=True)
        if device.type == "cuda":
            import torch

            torch.cuda.synchronize()
        latent.append(time.perf_counter() - started)
    return summarise(shape, variants, args, path, build_s, statistics.median(latent))


def summarise(
    shape: str,
    variants: list[Variant],
    args: argparse.Namespace,
    path: Path,
    build_s: float,
    latent_s: float,
) -> dict[str, Any]:
    width, height, steps = dims(args)
    stock = variants[0]
    base = next((v for v in variants if v.name == "none"), None)
    p50 = {v.name: statistics.median(v.latencies) for v in variants}
    table: dict[str, dict[str, Any]] = {}
    for v in variants:
        diffs = [np.abs(v.images[s] - stock.images[s]) for s in stock.images]
        table[v.name] = {
            "options": list(v.options) if v.options is not None else None,
            "p50_s": round(p50[v.name], 4),
            "p95_s": percentile(v.latencies, 95, 4),
            "mean_s": round(statistics.fmean(v.latencies), 4),
            "images_per_s": round(len(v.latencies) / sum(v.latencies), 3),
            "speedup_vs_stock": round(p50["stock"] / p50[v.name], 3),
            "speedup_vs_none": round(p50["none"] / p50[v.name], 3) if base else None,
            "pixel_max_diff": int(max(d.max() for d in diffs)),
            "pixel_mean_diff": round(float(statistics.fmean(d.mean() for d in diffs)), 4),
            "load_s": v.load_s,
            "first_s": v.first_s,
            "compile_s": round(max(0.0, v.first_s - p50[v.name]), 3),
            **({"skipped": v.applied["skipped"]} if v.applied.get("skipped") else {}),
        }
    keep = [
        v.name
        for v in variants
        if base
        and v.options
        and len(v.options) == 1
        and v.name != "none"
        and table[v.name]["speedup_vs_none"] >= args.keep_threshold
    ]
    best = min((v for v in variants if v.name != "stock"), key=lambda v: p50[v.name])
    goal = GOALS.get(shape)
    result: dict[str, Any] = {
        "width": width,
        "height": height,
        "steps": steps,
        "weights_bytes": models.folder_bytes(path),
        "build_s": build_s,
        "variants": table,
        "best": best.name,
        "keep": keep,
        "stock_latent_p50_s": round(latent_s, 4),
        "stock_image_std": round(float(np.std(next(iter(stock.images.values())))), 2),
    }
    if goal is not None:
        result["goal"] = {"p50_s": goal[0], "speedup": goal[1]}
        result["goal_met"] = bool(
            table[best.name]["p50_s"] <= goal[0] and table[best.name]["speedup_vs_stock"] >= goal[1]
        )
    print_table(shape, table, result)
    return result


def print_table(shape: str, table: dict[str, dict[str, Any]], result: dict[str, Any]) -> None:
    head = (
        f"  {'variant':<16}{'p50 s':>9}{'p95 s':>9}{'img/s':>8}{'x stock':>9}{'x none':>8}"
        f"{'max px':>8}{'mean px':>9}{'load s':>8}{'1st s':>8}"
    )
    print(head)
    for name, row in table.items():
        vs_none = "-" if row["speedup_vs_none"] is None else f"{row['speedup_vs_none']:.3f}"
        print(
            f"  {name:<16}{row['p50_s']:>9.4f}{row['p95_s']:>9.4f}{row['images_per_s']:>8.2f}"
            f"{row['speedup_vs_stock']:>9.3f}{vs_none:>8}{row['pixel_max_diff']:>8}"
            f"{row['pixel_mean_diff']:>9.4f}{row['load_s']:>8.2f}{row['first_s']:>8.2f}"
        )
    print(
        f"  best {result['best']}; keep {result['keep'] or 'nothing'}; stock without decode "
        f"{result['stock_latent_p50_s']} s; goal met: {result.get('goal_met', '-')}"
    )


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    started = time.perf_counter()
    import diffusers
    import torch

    device = models.start_torch(args.threads, args.device)
    shapes = {shape: run_shape(shape, device, args) for shape in args.shape}
    result: dict[str, Any] = {
        "benchmark": "inference",
        "mode": "quick" if args.quick else "full",
        "device": device.type,
        "device_name": torch.cuda.get_device_name()
        if device.type == "cuda"
        else platform.processor() or platform.machine(),
        "dtype": "float16" if device.type == "cuda" else "float32",
        "torch": torch.__version__,
        "diffusers": diffusers.__version__,
        "threads": torch.get_num_threads() if device.type == "cpu" else None,
        "repeats": args.repeats,
        "scheduler": args.scheduler,
        "shapes": shapes,
    }
    # Flat figures, the first thing to read (and what the smoke test checks).
    for shape, figures in shapes.items():
        rows = figures["variants"]
        result[f"{shape}_stock_p50_s"] = rows["stock"]["p50_s"]
        result[f"{shape}_best_p50_s"] = rows[figures["best"]]["p50_s"]
        result[f"{shape}_best_speedup"] = rows[figures["best"]]["speedup_vs_stock"]
        result[f"{shape}_best_images_per_s"] = rows[figures["best"]]["images_per_s"]
        result[f"{shape}_stock_images_per_s"] = rows["stock"]["images_per_s"]
        result[f"{shape}_max_pixel_diff"] = max(row["pixel_max_diff"] for row in rows.values())
    result["wall_s"] = round(time.perf_counter() - started, 1)
    print(json.dumps(result, sort_keys=True), flush=True)


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    sys.exit(main())
