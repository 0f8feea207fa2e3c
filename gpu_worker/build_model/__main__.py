"""`python -m gpu_worker.build_model`: the command line (see the package's docstring)."""

from __future__ import annotations

import argparse
from pathlib import Path

import gpu_worker.build_model as package
from gpu_worker.build_model.lora import build_lora
from gpu_worker.build_model.pipeline import build
from gpu_worker.build_model.specs import ARCHS


def main() -> None:
    parser = argparse.ArgumentParser(
        prog="python -m gpu_worker.build_model",
        description=package.__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--arch", choices=sorted(ARCHS), default="tiny")
    target = parser.add_mutually_exclusive_group(required=True)
    target.add_argument("--out", type=Path, help="folder for the pipeline")
    target.add_argument("--lora", type=Path, help="a .safetensors file for a LoRA adapter")
    parser.add_argument("--fp16", action="store_true", help="store half-precision weights")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if args.lora is not None:
        if args.lora.suffix != ".safetensors":
            parser.error("--lora must name a .safetensors file")
        print(build_lora(args.arch, args.lora, seed=args.seed))
    else:
        print(build(args.arch, args.out, fp16=args.fp16, seed=args.seed))


if __name__ == "__main__":
    main()
