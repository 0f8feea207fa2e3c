"""The baseline of `bench.worker`: a plain diffusers loop, nothing of sdsaas.

`python -m bench.diffusers_loop --model DIR [--width 64 --height 64 --steps 2 ...]` loads the
pipeline once (diffusers' StableDiffusionPipeline, Euler, fp32 on the CPU; the threads are
torch's, from OMP_NUM_THREADS), prints `{"ready": true, "load_s": ...}`, then takes commands on
stdin, one a line: `N SEED` generates N images one after another (seeds SEED..SEED+N-1, the
same prompt, PIL images out as the worker gets them) and prints one JSON line
`{"images": N, "seconds": S}`, S being the loop's wall time alone. An empty line or EOF ends it.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

PROMPT = "a lighthouse on a cliff in a storm"


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.diffusers_loop", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--model", required=True, help="a diffusers folder")
    parser.add_argument("--width", type=int, default=64)
    parser.add_argument("--height", type=int, default=64)
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--guidance", type=float, default=7.5)
    parser.add_argument("--prompt", default=PROMPT)
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    started = time.monotonic()
    import torch
    from diffusers import EulerDiscreteScheduler, StableDiffusionPipeline

    pipeline = StableDiffusionPipeline.from_pretrained(
        args.model, safety_checker=None, requires_safety_checker=False
    )
    pipeline.scheduler = EulerDiscreteScheduler.from_config(pipeline.scheduler.config)
    pipeline.set_progress_bar_config(disable=True)
    print(json.dumps({"ready": True, "load_s": round(time.monotonic() - started, 3)}), flush=True)
    for line in sys.stdin:
        if not line.strip():
            break
        count, seed = (int(word) for word in line.split())
        started = time.perf_counter()
        for i in range(count):
            pipeline(
                prompt=args.prompt,
                negative_prompt="",
                width=args.width,
                height=args.height,
                num_inference_steps=args.steps,
                guidance_scale=args.guidance,
                generator=torch.Generator("cpu").manual_seed(seed + i),
                output_type="pil",
            )
        seconds = time.perf_counter() - started
        print(json.dumps({"images": count, "seconds": round(seconds, 6)}), flush=True)


if __name__ == "__main__":
    main()
