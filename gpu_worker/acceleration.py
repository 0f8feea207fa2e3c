"""Speed-ups for a loaded pipeline, each a named option that the worker's settings switch on.

    SDSAAS_GPU_OPTIMIZATIONS=auto                      # the default: see DEFAULTS
    SDSAAS_GPU_OPTIMIZATIONS=sdpa,channels_last,fuse_qkv,compile
    SDSAAS_GPU_OPTIMIZATIONS=none

Options (`OPTIONS`), applied in this order whatever order they are named in:

- `sdpa`: PyTorch's scaled-dot-product attention (`AttnProcessor2_0`) in the UNet and the VAE.
  diffusers already picks it by default on torch >= 2, so this only pins it (a checkpoint or a
  LoRA load that set another processor is overridden).
- `fuse_qkv`: one matrix product for query, key and value in self-attention (key and value in
  cross-attention): `pipeline.fuse_qkv_projections()`, UNet and VAE. LoRA layers wrap the
  separate projections, which the fused processor no longer calls: `prepare_for_loras` undoes
  the fusion for good before the first LoRA is loaded into the pipeline.
- `channels_last`: NHWC memory format for the UNet's and the VAE's convolutions.
- `compile`: `torch.compile` (inductor, default mode) of the UNet and the VAE decoder, in place
  (`Module.compile`: the components keep their class, so LoRA loading and `from_pipe` work).
  Compilation happens at the first call of each new shape (size, batch, LoRA set), which the
  job pays unless the worker warmed up; `use_compile_cache` keeps its artefacts on disk.
- `compile_regional`: `torch.compile` of the UNet's repeated transformer blocks only
  (diffusers' `compile_repeated_blocks`): most of the speed for a fraction of the compile time.
- `cuda_graphs`: `compile` in mode "reduce-overhead" (CUDA graphs: one launch per UNet call),
  for fixed shapes; CUDA only, skipped with a reason elsewhere.

fp16 is not an option: `inference.read_pipeline` loads fp16 on CUDA and fp32 on the CPU.

"Keep only what measures faster": `bench/inference.py` measures stock diffusers against each
option alone and all together on the same run; the defaults follow its figures. Until a GPU
run says otherwise, `auto` keeps what the worker always did (sdpa and channels-last on CUDA,
nothing on the CPU), so CPU results stay bit for bit those of plain diffusers.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

logger = logging.getLogger(__name__)

OPTIONS = ("sdpa", "fuse_qkv", "channels_last", "compile", "compile_regional", "cuda_graphs")
# What `auto` means on each device type: what load_pipeline did before these options existed.
DEFAULTS: dict[str, tuple[str, ...]] = {"cuda": ("sdpa", "channels_last"), "cpu": ()}
_COMPILERS = ("compile", "compile_regional", "cuda_graphs")


def parse(text: str) -> tuple[str, ...] | None:
    """A settings value -> option names in `OPTIONS` order; None for `auto` (or empty), () for
    `none`. Raises ValueError naming what is unknown, so a typo fails at the worker's start."""
    words = [word.strip().lower() for word in text.split(",") if word.strip()]
    if not words or words == ["auto"]:
        return None
    if words == ["none"]:
        return ()
    unknown = sorted(set(words) - set(OPTIONS))
    if unknown:
        raise ValueError(
            f"unknown GPU optimization(s) {', '.join(unknown)}; known: auto, none, "
            + ", ".join(OPTIONS)
        )
    return canonical(words)


def canonical(names: Iterable[str]) -> tuple[str, ...]:
    wanted = set(names)
    return tuple(name for name in OPTIONS if name in wanted)


def resolve(names: Sequence[str] | None, device: torch.device) -> tuple[str, ...]:
    """The options to apply on `device`: `names`, or the device's default for None (auto)."""
    if names is None:
        return DEFAULTS.get(device.type, ())
    return canonical(names)


@dataclass
class Applied:
    """What `apply` did: the options in force, those skipped (with why) and seconds spent."""

    options: tuple[str, ...] = ()
    skipped: dict[str, str] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)


def use_compile_cache(directory: Path | str) -> None:
    """Keep inductor's artefacts in `directory`, so that a restarted worker does not recompile.

    Inductor's FX graph cache (compiled kernels by graph) and the AOTAutograd cache (the traced
    forward, by graph) are on by default in torch 2.13; their default home is under /tmp, lost
    with the container. Dynamo still traces the Python code at each start (seconds), but the
    minutes of inductor codegen and Triton autotuning come from the cache. Call it before the
    first compiled call; `TORCHINDUCTOR_CACHE_DIR` is read when the cache is first used.
    """
    path = Path(directory)
    path.mkdir(parents=True, exist_ok=True)
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(path)
    os.environ.setdefault("TRITON_CACHE_DIR", str(path / "triton"))
    import torch._functorch.config as functorch_config
    import torch._inductor.config as inductor_config

    inductor_config.fx_graph_cache = True
    functorch_config.enable_autograd_cache = True


def apply(
    pipeline: Any,
    names: Sequence[str],
    device: torch.device,
    *,
    compile_cache_dir: Path | str | None = None,
) -> Applied:
    """Apply `names` to a pipeline already on `device` (after `.to(device)`: compiled modules
    must not move afterwards). Returns what was applied; an option that cannot apply here is
    skipped with a reason and logged, never an error."""
    applied = Applied()
    wanted = canonical(names)
    compilers = [name for name in wanted if name in _COMPILERS]
    if device.type != "cuda" and "cuda_graphs" in compilers:
        applied.skipped["cuda_graphs"] = f"CUDA graphs need CUDA, not {device.type}"
        compilers.remove("cuda_graphs")
    if len(compilers) > 1:
        # One compiler at a time: the last named in OPTIONS order wins (cuda_graphs > regional).
        for name in compilers[:-1]:
            applied.skipped[name] = f"{compilers[-1]} given too"
        compilers = compilers[-1:]
    steps = [name for name in wanted if name not in _COMPILERS] + compilers
    if compilers and compile_cache_dir is not None:
        use_compile_cache(compile_cache_dir)
    for name in steps:
        started = time.perf_counter()
        _STEPS[name](pipeline)
        applied.seconds[name] = round(time.perf_counter() - started, 4)
    applied.options = tuple(name for name in wanted if name in steps)
    for name, why in applied.skipped.items():
        logger.warning("GPU optimization %s skipped: %s", name, why)
    if applied.options:
        logger.info("GPU optimizations: %s", ", ".join(applied.options))
    return applied


def prepare_for_loras(pipeline: Any) -> None:
    """Undo QKV fusion before LoRAs are loaded: PEFT wraps `to_q`/`to_k`/`to_v`, which the fused
    processor does not call (it reads `to_qkv`), so the adapters would change no attention."""
    if getattr(pipeline, "fusing_unet", False) or getattr(pipeline, "fusing_vae", False):
        logger.info("unfusing QKV projections: a LoRA is loaded into this pipeline")
        pipeline.unfuse_qkv_projections(
            unet=bool(getattr(pipeline, "fusing_unet", False)),
            vae=bool(getattr(pipeline, "fusing_vae", False)),
        )


def _sdpa(pipeline: Any) -> None:
    from diffusers.models.attention_processor import AttnProcessor2_0

    pipeline.unet.set_attn_processor(AttnProcessor2_0())
    pipeline.vae.set_attn_processor(AttnProcessor2_0())


def _fuse_qkv(pipeline: Any) -> None:
    pipeline.fuse_qkv_projections()


def _channels_last(pipeline: Any) -> None:
    pipeline.unet.to(memory_format=torch.channels_last)
    pipeline.vae.to(memory_format=torch.channels_last)


def _compile(pipeline: Any, mode: str | None = None) -> None:
    # fullgraph=False: a graph break (a LoRA's PEFT layers, a callback) falls back to eager for
    # that part instead of failing the job.
    pipeline.unet.compile(mode=mode)
    pipeline.vae.decoder.compile(mode=mode)


def _compile_regional(pipeline: Any) -> None:
    pipeline.unet.compile_repeated_blocks()


def _cuda_graphs(pipeline: Any) -> None:
    _compile(pipeline, mode="reduce-overhead")


_STEPS = {
    "sdpa": _sdpa,
    "fuse_qkv": _fuse_qkv,
    "channels_last": _channels_last,
    "compile": _compile,
    "compile_regional": _compile_regional,
    "cuda_graphs": _cuda_graphs,
}
