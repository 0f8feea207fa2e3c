"""`python -m bench.load`: a worker's cold start, from its process start to its first image.

For each `--shape` (sd15, sdxl: the project's random weights, fp16 on CUDA; the tiny model for
`--quick`) and each medium, a fresh process (`python -m bench.load child`, the worker's loading
path without Celery or Django: `gpu_worker.model_store.ModelStore`, then
`gpu_worker.inference.read_pipeline`, `.to(device)`, `gpu_worker.acceleration.apply`,
`gpu_worker.inference.generate`) times each phase:

| phase | what |
|---|---|
| `process_s` | the spawn to the child's first line of Python, imports of the interpreter |
| `import_s` | importing torch, diffusers and the worker's modules |
| `device_init_s` | the CUDA context (0 on the CPU) |
| `download_s` | S3 to the local cache: listing, parallel ranged GETs, fsync, sha256 (0 from disk) |
| `read_s` | the safetensors files into host memory (`from_pretrained`) |
| `to_device_s` | host to device (`.to(device)`, synchronised) |
| `warm_up_s` | the acceleration options and a 2-step image at the size (compilation, if any) |
| `first_inference_s` | the first real image (the shape's size and steps) |
| `total_s` | spawn to first image |

Media: `disk-cold` (the folder's pages evicted from the page cache first with
`posix_fadvise(POSIX_FADV_DONTNEED)`, checked with `mincore`: `resident_before` is the fraction
still cached; above 0.05 the eviction did not work and the row says so), `disk-warm` (read once
before), `s3` (a fresh moto_server on loopback, the folder pushed once with
`gpu_worker.model_store.push`; a fresh cache folder each run).

Baseline, the same bytes from the same medium in the same run, alternating with the worker
(baseline first in even rounds, second in odd): every file of the folder read with plain
`readinto` calls of 16 MiB (`raw_read_s`; after the same eviction for `disk-cold`), and for
`s3` a plain sequential GET of each object (`raw_get_s`). The figure the issue sets a goal for:
`on_device_ratio` = (download + read + to-device) / raw read of the same medium; goal <= 1.5.

    python -m bench.load --quick                       # CPU smoke: tiny model, each medium once
    python -m bench.load --shape sd15 --shape sdxl     # the GPU run (bench/gpu_all.sh)

Prints a table, then one JSON line last.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import mmap
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from bench import models

CHUNK = 16 * 1024 * 1024
MEDIA = ("disk-cold", "disk-warm", "s3")
GOAL_RATIO = 1.5
PHASES = (
    "process_s",
    "import_s",
    "device_init_s",
    "download_s",
    "read_s",
    "to_device_s",
    "warm_up_s",
    "first_inference_s",
    "total_s",
)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.load", description=__doc__.split("\n")[0]
    )
    models.add_arguments(parser)
    parser.add_argument("--media", default=",".join(MEDIA), help=f"comma list of {MEDIA}")
    parser.add_argument("--steps", type=int, help="first image's steps (default: the shape's)")
    parser.add_argument("--optimizations", default="auto", help="as SDSAAS_GPU_OPTIMIZATIONS")
    return models.settle(parser.parse_args(argv), repeats=2, quick_repeats=1)


# --- the page cache ---


def evict(path: Path) -> None:
    """Drop the folder's pages from the page cache (no root needed: clean pages of files we can
    open). Written pages are flushed first; dirty ones would stay."""
    for file in files_of(path):
        fd = os.open(file, os.O_RDONLY)
        try:
            os.fsync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def resident_fraction(path: Path) -> float | None:
    """The fraction of the folder's pages in the page cache (mincore), None where unknown."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.mmap.restype = ctypes.c_void_p
        libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int]
        libc.mmap.argtypes += [ctypes.c_int, ctypes.c_long]
        libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
        libc.mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_char_p]
    except (OSError, AttributeError):
        return None
    page = mmap.PAGESIZE
    resident = total = 0
    for file in files_of(path):
        size = file.stat().st_size
        if not size:
            continue
        fd = os.open(file, os.O_RDONLY)
        try:
            address = libc.mmap(None, size, mmap.PROT_READ, mmap.MAP_SHARED, fd, 0)
            if address in (None, ctypes.c_void_p(-1).value):
                return None
            pages = (size + page - 1) // page
            vector = ctypes.create_string_buffer(pages)
            failed = libc.mincore(address, size, vector)
            libc.munmap(address, size)
            if failed:
                return None
            resident += sum(byte & 1 for byte in vector.raw)
            total += pages
        finally:
            os.close(fd)
    return round(resident / total, 3) if total else None


def files_of(path: Path) -> list[Path]:
    return sorted(f for f in path.rglob("*") if f.is_file())


def raw_read(path: Path) -> tuple[float, int]:
    """Every file of the folder with plain reads into one buffer: (seconds, bytes)."""
    buffer = bytearray(CHUNK)
    view = memoryview(buffer)
    total = 0
    started = time.perf_counter()
    for file in files_of(path):
        with file.open("rb", buffering=0) as handle:
            while count := handle.readinto(view):
                total += count
    return time.perf_counter() - started, total


def raw_get(client: Any, uri: str) -> tuple[float, int]:
    """Every object of the S3 source with one plain GET each, read to the end: (seconds, bytes)."""
    from gpu_worker.model_store.s3 import list_source, parse_s3_uri

    bucket, _ = parse_s3_uri(uri)
    total = 0
    started = time.perf_counter()
    _, objects = list_source(client, uri)
    for obj in objects:
        body = client.get_object(Bucket=bucket, Key=obj.key)["Body"]
        while chunk := body.read(CHUNK):
            total += len(chunk)
    return time.perf_counter() - started, total


# --- the child: one cold start ---


def child(spec: dict[str, Any]) -> dict[str, Any]:
    entered = time.time()
    times: dict[str, float] = {"process_s": entered - spec["spawned"]}
    mark = time.perf_counter()

    def lap(name: str) -> None:
        nonlocal mark
        now = time.perf_counter()
        times[name] = now - mark
        mark = now

    import torch

    from gpu_worker import acceleration, inference, model_store
    from sdsaas.contract import Scheduler

    torch.set_num_threads(spec["threads"])
    lap("import_s")
    device = inference.pick_device()
    if device.type == "cuda":
        torch.zeros(1, device=device)
        torch.cuda.synchronize()
    lap("device_init_s")
    if spec["uri"].startswith("s3://"):
        store = model_store.ModelStore(Path(spec["cache_dir"]), model_store.s3_client_from_env)
        path = str(store.local_path(spec["uri"], spec["sha256"]))
    else:
        path = spec["uri"]
    lap("download_s")
    pipeline = inference.read_pipeline(path, device)
    lap("read_s")
    pipeline.to(device)
    if device.type == "cuda":
        torch.cuda.synchronize()
    lap("to_device_s")
    names = acceleration.resolve(acceleration.parse(spec["optimizations"]), device)
    applied = acceleration.apply(pipeline, names, device, compile_cache_dir=spec["compile_cache"])
    model = inference.LoadedModel(pipeline)

    def request(steps: int) -> inference.Request:
        return inference.Request(
            prompt="a lighthouse on a cliff",
            negative_prompt="",
            width=spec["width"],
            height=spec["height"],
            steps=steps,
            guidance=7.5,
            scheduler=Scheduler.EULER,
            num_outputs=1,
            seed=1,
        )

    inference.generate(model, request(2))
    lap("warm_up_s")
    inference.generate(model, request(spec["steps"]))
    lap("first_inference_s")
    times["total_s"] = time.time() - spec["spawned"]
    return {
        **{name: round(value, 4) for name, value in times.items()},
        "options": list(applied.options),
        "device": device.type,
    }


def spawn(spec: dict[str, Any], env: dict[str, str]) -> dict[str, Any]:
    spec = {**spec, "spawned": time.time()}
    done = subprocess.run(
        [sys.executable, "-m", "bench.load", "child", json.dumps(spec)],
        cwd=models.ROOT,
        env=env,
        capture_output=True,
        text=True,
    )
    if done.returncode:
        raise SystemExit(
            f"the cold-start child failed:\n{done.stdout[-3000:]}{done.stderr[-3000:]}"
        )
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


# --- the parent ---


class LocalS3:
    """moto_server on loopback in a temporary folder (sdsaas.devstack's start), one bucket."""

    def __init__(self) -> None:
        from sdsaas import devstack
        from sdsaas.devstack import free_port

        self.home = Path(tempfile.mkdtemp(prefix="sdsaas-load-"))
        port = free_port()
        self.endpoint = f"http://127.0.0.1:{port}"
        env = devstack.local_env(aws=self.endpoint, base="http://127.0.0.1:9")
        self.stack = devstack.Stack(env, self.home)
        try:
            devstack.start_aws(self.stack, port=port)
        except (Exception, SystemExit):
            self.close()
            raise
        self.bucket = env.get("SDSAAS_S3_BUCKET", "sdsaas-local")
        self.env = {
            **os.environ,
            "SDSAAS_S3_ENDPOINT_URL": self.endpoint,
            "AWS_ACCESS_KEY_ID": "local",
            "AWS_SECRET_ACCESS_KEY": "local",
        }

    def client(self) -> Any:
        import boto3

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            region_name="us-east-1",
            aws_access_key_id="local",
            aws_secret_access_key="local",
        )

    def close(self) -> None:
        self.stack.stop()
        shutil.rmtree(self.home, ignore_errors=True)


def run_shape(shape: str, args: argparse.Namespace, s3: LocalS3 | None, cuda: bool) -> Any:
    width, height, steps = models.SIZES[shape]
    path, build_s = models.ensure(shape, args.models, fp16=cuda)
    size = models.folder_bytes(path)
    spec = {
        "width": width,
        "height": height,
        "steps": args.steps or steps,
        "optimizations": args.optimizations,
        "compile_cache": str(args.compile_cache),
        "threads": args.threads,
    }
    shape_result: dict[str, Any] = {"bytes": size, "build_s": build_s, "media": {}}
    media = [m for m in args.media.split(",") if m]
    uri = sha = ""
    if "s3" in media and s3 is not None:
        from gpu_worker.model_store import push

        started = time.perf_counter()
        uri, sha = push(
            s3.client(), path, f"s3://{s3.bucket}/models/{shape}-{uuid.uuid4().hex[:8]}/"
        )
        shape_result["upload_s"] = round(time.perf_counter() - started, 2)
    for medium in media:
        if medium == "s3" and s3 is None:
            shape_result["media"]["s3"] = {"skipped": "no moto_server (or boto3) here"}
            continue
        rows: list[dict[str, Any]] = []
        for round_ in range(args.repeats):
            row: dict[str, Any] = {}
            order = ("raw", "worker") if round_ % 2 == 0 else ("worker", "raw")
            for side in order:
                if medium == "disk-cold":
                    evict(path)
                    row[f"{side}_resident_before"] = resident_fraction(path)
                elif medium == "disk-warm":
                    raw_read(path)  # in the page cache, whatever ran before
                if side == "raw" and medium == "s3":
                    assert s3 is not None
                    row["raw_s"], row["raw_bytes"] = raw_get(s3.client(), uri)
                elif side == "raw":
                    row["raw_s"], row["raw_bytes"] = raw_read(path)
                else:
                    cache = Path(tempfile.mkdtemp(prefix="sdsaas-load-cache-"))
                    child_spec = {
                        **spec,
                        "uri": uri if medium == "s3" else str(path),
                        "sha256": sha,
                        "cache_dir": str(cache),
                    }
                    row.update(spawn(child_spec, s3.env if s3 is not None else dict(os.environ)))
                    shutil.rmtree(cache, ignore_errors=True)
            row["on_device_s"] = row["download_s"] + row["read_s"] + row["to_device_s"]
            rows.append(row)
        shape_result["media"][medium] = summarise_medium(medium, rows)
    return shape_result


def summarise_medium(medium: str, rows: list[dict[str, Any]]) -> dict[str, Any]:
    def median(name: str) -> float:
        return round(statistics.median(row[name] for row in rows), 4)

    result: dict[str, Any] = {name: median(name) for name in PHASES}
    result["raw_read_s"] = median("raw_s")
    result["raw_bytes"] = rows[0]["raw_bytes"]
    result["on_device_s"] = median("on_device_s")
    result["on_device_ratio"] = round(result["on_device_s"] / max(result["raw_read_s"], 1e-9), 3)
    result["raw_gb_per_s"] = round(result["raw_bytes"] / max(result["raw_read_s"], 1e-9) / 1e9, 3)
    result["goal_met"] = result["on_device_ratio"] <= GOAL_RATIO
    result["rounds"] = len(rows)
    result["options"] = rows[0]["options"]
    if medium == "disk-cold":
        resident = [
            row.get(f"{side}_resident_before") for row in rows for side in ("raw", "worker")
        ]
        known = [value for value in resident if value is not None]
        result["resident_before"] = max(known) if known else None
        result["evicted"] = bool(known) and max(known) <= 0.05
        if not result["evicted"]:
            result["note"] = (
                "page cache eviction could not be checked (no mincore)"
                if not known
                else "posix_fadvise(DONTNEED) did not evict the files: this is not a cold read"
            )
    return result


def print_table(results: dict[str, Any]) -> None:
    labels = ("import", "cuda", "download", "read", "to_dev", "warm_up", "1st_img", "total")
    head = f"  {'shape':<8}{'medium':<11}{'raw s':>8}{'GB/s':>7}"
    head += "".join(f"{label:>10}" for label in labels)
    head += f"{'ratio':>7}  goal (on-device / raw read <= {GOAL_RATIO})"
    print(head)
    for shape, result in results.items():
        for medium, row in result["media"].items():
            if "skipped" in row:
                print(f"  {shape:<8}{medium:<11}skipped: {row['skipped']}")
                continue
            line = f"  {shape:<8}{medium:<11}{row['raw_read_s']:>8.3f}{row['raw_gb_per_s']:>7.2f}"
            line += "".join(f"{row[name]:>10.3f}" for name in PHASES[1:])
            line += f"{row['on_device_ratio']:>7.2f}  {'met' if row['goal_met'] else 'NOT met'}"
            print(line + (f"  ({row['note']})" if "note" in row else ""))


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["child"]:
        print(json.dumps(child(json.loads(argv[1]))), flush=True)
        return
    args = parse_args(argv)
    started = time.perf_counter()
    import torch

    cuda = torch.cuda.is_available()
    s3: LocalS3 | None = None
    if "s3" in args.media.split(","):
        try:
            s3 = LocalS3()
        except (Exception, SystemExit) as exc:  # no moto or boto3 here: the S3 rows say so
            print(f"  no local S3, its rows skipped: {exc!r}"[:300], flush=True)
    try:
        results = {shape: run_shape(shape, args, s3, cuda) for shape in args.shape}
    finally:
        if s3 is not None:
            s3.close()
    print_table(results)
    result: dict[str, Any] = {
        "benchmark": "load",
        "mode": "quick" if args.quick else "full",
        "device": "cuda" if cuda else "cpu",
        "device_name": torch.cuda.get_device_name() if cuda else "cpu",
        "torch": torch.__version__,
        "repeats": args.repeats,
        "optimizations": args.optimizations,
        "goal_ratio": GOAL_RATIO,
        "shapes": results,
    }
    for shape, figures in results.items():
        for medium, row in figures["media"].items():
            if "skipped" not in row:
                key = f"{shape}_{medium.replace('-', '_')}"
                result[f"{key}_total_s"] = row["total_s"]
                result[f"{key}_on_device_ratio"] = row["on_device_ratio"]
    result["wall_s"] = round(time.perf_counter() - started, 1)
    print(json.dumps(result, sort_keys=True), flush=True)


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main()
