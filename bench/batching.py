"""`python -m bench.batching`: micro-batching, N waiting jobs as one batch against one by one.

For each `--shape` (sd15: 512x512, sdxl: 1024x1024, 25 steps; fp16 on CUDA, fp32 on the CPU),
on the project's random weights (bench/models.py), the worker's inference path loaded once as a
worker loads it (`gpu_worker.inference.load_pipeline`, the default speed-ups of the device):

- `alone`: `--batch` jobs (one image each, prompts and seeds of their own) run one after the
  other with `inference.generate`, as a worker with SDSAAS_GPU_MAX_BATCH=1 runs a backlog;
- `batch`: the same jobs as one `inference.generate_batch`, as a worker with
  SDSAAS_GPU_MAX_BATCH >= `--batch` runs them when they wait in its queue together.

Both warmed up, then `--repeats` rounds, the order reversed every other round (ABBA). Figures:
images/s of each side (the rounds' median), `speedup` (batch over alone; goal >= 1.4 for sd15
on a GPU, issue 14 item 4), and the pixel difference between each job's image in the batch and
alone (max and mean of |a - b| over RGB, 0-255: batched kernels sum in another order).

    python -m bench.batching --quick                  # CPU smoke: the tiny model, 64x64, 4 steps
    python -m bench.batching --shape sd15 --batch 4   # the GPU run (bench/gpu_all.sh)

Prints a table per shape, then one JSON line last.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from typing import Any

import numpy as np

from bench import models

GOAL_SPEEDUP = 1.4  # sd15 512x512 on a GPU
PROMPTS = (
    "a lighthouse on a cliff in a storm",
    "a red fox in fresh snow, morning light",
    "a paper boat on a rain puddle, macro",
    "a city street at night, neon reflections",
)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.batching", description=__doc__.split("\n")[0]
    )
    models.add_arguments(parser)
    parser.add_argument("--batch", type=int, default=4, help="jobs in the batch")
    parser.add_argument("--steps", type=int, help="denoising steps (default: the shape's)")
    parser.add_argument("--seed", type=int, default=2000)
    return models.settle(parser.parse_args(argv), repeats=3, quick_repeats=2)


def run_shape(shape: str, device: Any, args: argparse.Namespace) -> dict[str, Any]:
    from gpu_worker import inference
    from sdsaas.contract import Scheduler

    width, height, steps = models.SIZES[shape]
    steps = args.steps or steps
    path, build_s = models.ensure(shape, args.models, fp16=device.type == "cuda")
    model = inference.LoadedModel(inference.load_pipeline(str(path), device))

    def requests(seed: int) -> list[inference.Request]:
        return [
            inference.Request(
                prompt=PROMPTS[n % len(PROMPTS)],
                negative_prompt="",
                width=width,
                height=height,
                steps=steps,
                guidance=7.5,
                scheduler=Scheduler.EULER,
                num_outputs=1,
                seed=seed + n,
            )
            for n in range(args.batch)
        ]

    def alone(seed: int) -> list[np.ndarray]:
        return [np.asarray(inference.generate(model, r)[0], np.int16) for r in requests(seed)]

    def batch(seed: int) -> list[np.ndarray]:
        made = inference.generate_batch(model, requests(seed))
        return [np.asarray(images[0], np.int16) for images in made]

    sides = {"alone": alone, "batch": batch}
    for run in sides.values():  # warm-up
        run(args.seed - 100)
    rates: dict[str, list[float]] = {name: [] for name in sides}
    diffs: list[np.ndarray] = []
    for round_ in range(args.repeats):
        seed = args.seed + 100 * round_
        images: dict[str, list[np.ndarray]] = {}
        for name in sides if round_ % 2 == 0 else list(sides)[::-1]:
            started = time.perf_counter()
            images[name] = sides[name](seed)
            rates[name].append(args.batch / (time.perf_counter() - started))
        diffs += [np.abs(a - b) for a, b in zip(images["alone"], images["batch"], strict=True)]
    alone_ips, batch_ips = (round(statistics.median(rates[name]), 3) for name in sides)
    speedup = round(batch_ips / alone_ips, 3)
    result: dict[str, Any] = {
        "width": width,
        "height": height,
        "steps": steps,
        "batch": args.batch,
        "build_s": build_s,
        "alone_images_per_s": alone_ips,
        "batch_images_per_s": batch_ips,
        "speedup": speedup,
        "speedup_per_round": [
            round(b / a, 3) for a, b in zip(rates["alone"], rates["batch"], strict=True)
        ],
        "pixel_max_diff": int(max(d.max() for d in diffs)),
        "pixel_mean_diff": round(float(np.mean([d.mean() for d in diffs])), 4),
    }
    if shape == "sd15" and device.type == "cuda":
        result["goal_met"] = speedup >= GOAL_SPEEDUP
    return result


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    started = time.perf_counter()
    import torch

    device = models.start_torch(args.threads)
    shapes = {shape: run_shape(shape, device, args) for shape in args.shape}
    print(f"\nmicro-batching on {device.type}: {args.batch} jobs, {args.repeats} rounds")
    print(f"{'shape':<8} {'alone img/s':>12} {'batch img/s':>12} {'speedup':>8} {'max px':>7}")
    for shape, row in shapes.items():
        print(
            f"{shape:<8} {row['alone_images_per_s']:>12} {row['batch_images_per_s']:>12}"
            f" {row['speedup']:>8} {row['pixel_max_diff']:>7}"
        )
    result: dict[str, Any] = {
        "benchmark": "batching",
        "mode": "quick" if args.quick else "full",
        "device": device.type,
        "torch": torch.__version__,
        "batch": args.batch,
        "repeats": args.repeats,
        "goal_speedup": GOAL_SPEEDUP,
        "shapes": shapes,
    }
    for shape, row in shapes.items():
        result[f"{shape}_batch_speedup"] = row["speedup"]
        result[f"{shape}_max_pixel_diff"] = row["pixel_max_diff"]
    result["wall_s"] = round(time.perf_counter() - started, 1)
    print(json.dumps(result, sort_keys=True), flush=True)


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    sys.exit(main())
