"""The GPU benchmarks' weights: the project's architectures with random weights, built once.

`bench.inference` and `bench.load` need SD 1.5- and SDXL-shaped folders (and the tiny test
models for their quick modes); nothing may be downloaded, so `gpu_worker.build_model` writes
them (its `ARCHS` hold the real configs) into `--models` (default var/models/bench), one folder
per architecture and precision, reused by later runs. Built aside and renamed into place, so a
build cut short never looks complete. sd15 in fp16 (2.0 GB) took 21 s to write on 2 CPU cores,
sdxl in fp16 (6.3 GB, 7 GB of memory) 82 s.
"""

from __future__ import annotations

import argparse
import shutil
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
MODELS = ROOT / "var" / "models" / "bench"
COMPILE_CACHE = ROOT / "var" / "compile-cache"
# Each benchmark shape's architecture (gpu_worker.build_model.ARCHS).
SIZES = {
    "tiny": (64, 64, 4),
    "tiny-xl": (64, 64, 4),
    "sd15": (512, 512, 25),
    "sdxl": (1024, 1024, 25),
}


def ensure(arch: str, root: Path, *, fp16: bool) -> tuple[Path, float]:
    """The folder of `arch` under `root`, and the seconds spent building it now (0: it was)."""
    out = root / f"{arch}-{'fp16' if fp16 else 'fp32'}"
    if (out / "model_index.json").is_file():
        return out, 0.0
    from gpu_worker.build_model import build

    partial = out.with_name(out.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    started = time.perf_counter()
    print(f"  writing random {arch} weights ({'fp16' if fp16 else 'fp32'}) to {out}", flush=True)
    build(arch, partial, fp16=fp16)
    shutil.rmtree(out, ignore_errors=True)
    partial.rename(out)
    return out, round(time.perf_counter() - started, 2)


def folder_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The arguments both GPU benchmarks take: quick mode, shapes, folders, CPU threads."""
    parser.add_argument("--quick", action="store_true", help="CPU smoke: the tiny model")
    parser.add_argument("--shape", action="append", choices=sorted(SIZES), default=None)
    parser.add_argument("--repeats", type=int, help="measured rounds")
    parser.add_argument("--models", type=Path, default=MODELS)
    parser.add_argument("--compile-cache", type=Path, default=COMPILE_CACHE)
    parser.add_argument("--threads", type=int, default=1, help="CPU threads on the CPU")


def settle(args: argparse.Namespace, *, repeats: int, quick_repeats: int) -> argparse.Namespace:
    """Shapes and rounds: tiny and `quick_repeats` in quick mode, else sd15 + sdxl, `repeats`."""
    if args.quick:
        args.shape = args.shape or ["tiny"]
        args.repeats = args.repeats or quick_repeats
    args.shape = args.shape or ["sd15", "sdxl"]
    args.repeats = args.repeats or repeats
    return args


def start_torch(threads: int, device: str = "auto") -> Any:
    """The device to run on (CUDA when there is one, for "auto"), with `threads` CPU threads on
    the CPU, and diffusers' and transformers' progress bars and warnings off."""
    import diffusers
    import torch
    import transformers

    for library in (diffusers, transformers):
        library.utils.logging.disable_progress_bar()
        library.utils.logging.set_verbosity_error()
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cpu":
        torch.set_num_threads(threads)
    return torch.device(device)
