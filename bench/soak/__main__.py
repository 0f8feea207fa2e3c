"""`python -m bench.soak` (`make soak`): the command line (see the package's docstring)."""

from __future__ import annotations

import argparse
import io
import random
import signal
import sys

import bench.soak as package
from bench.soak.chaos import soak
from bench.soak.report import report
from bench.soak.stack import soak_env, start_stack
from bench.stack import Home, use_env
from sdsaas import devstack


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.soak", description=package.__doc__.split("\n")[0]
    )
    parser.add_argument("--jobs", type=int, default=200)
    parser.add_argument("--workers", type=int, default=2, help="GPU worker processes")
    parser.add_argument("--tenants", type=int, default=3)
    parser.add_argument("--concurrency", type=int, default=2, help="each tenant's cap")
    parser.add_argument("--visibility", type=int, default=10, help="base visibility timeout, s")
    parser.add_argument("--kill-every", type=float, default=10.0, help="mean s between kills")
    parser.add_argument("--steps", default="20-40", help="denoising steps per job, a range")
    parser.add_argument("--outputs", default="1-2", help="images per job, a range")
    parser.add_argument("--size", type=int, default=384, help="width and height")
    parser.add_argument("--calm-tail", type=int, default=4, help="jobs left when chaos stops")
    parser.add_argument("--max-run", type=float, default=540, help="chaos stops after this, s")
    parser.add_argument(
        "--drain", type=float, default=150, help="after chaos: s with no job finishing = lost"
    )
    parser.add_argument("--seed", type=int, default=9)
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder")
    return parser.parse_args()


def main() -> int:
    args = parse_args()
    if isinstance(sys.stdout, io.TextIOWrapper):
        sys.stdout.reconfigure(line_buffering=True)
    rng = random.Random(args.seed)
    home = Home.create("soak")
    env, database = soak_env(args, home)
    # This process reads the database with the stack's settings (the chaos, the final checks).
    use_env(env)
    stack = devstack.Stack(env, home.logs)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    print(f"sdsaas chaos soak (database: {database}); logs in {home.path}, kept unless it passes")
    ok = False
    try:
        slots, keys = start_stack(args, stack, home)
        result = soak(args, rng, stack, slots, keys, home.base)
        ok = report(result)
        return 0 if ok else 1
    finally:
        stack.stop()
        if ok and not args.keep:
            home.remove()


if __name__ == "__main__":
    sys.exit(main())
