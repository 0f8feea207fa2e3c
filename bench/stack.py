"""The benchmarks' local stack: sdsaas.devstack's pieces in a temporary folder of their own.

Shared by the benchmarks that run real processes (`bench.soak`, `bench.worker`): a home folder
with free ports and a log folder, the stack's environment (its own queue prefix, its own SQLite
file unless DATABASE_URL is set), the control plane started (moto_server, migrations and the
catalog, the API under gunicorn, the control worker, beat if asked) and Django set up in the
benchmark's own process, which reads the stack's database and creates the tenants it uses.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from sdsaas import devstack

# The tiny model, as `make run` builds it (rebuilt when older than its builder).
TINY_MODEL = devstack.ROOT / "var" / "models" / "tiny"
# One CPU thread per GPU worker: each stands for one GPU, and two workers with a thread per core
# each fight over the cores (a 512x512 job took 20x longer in a soak trial).
ONE_THREAD = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


@dataclass(frozen=True)
class Home:
    """A benchmark run's temporary folder, its logs and the ports of its servers."""

    path: Path
    logs: Path
    aws_port: int
    api_port: int

    @classmethod
    def create(cls, name: str) -> Home:
        path = Path(tempfile.mkdtemp(prefix=f"sdsaas-{name}-"))
        (path / "logs").mkdir()
        ports = {"aws_port": devstack.free_port(), "api_port": devstack.free_port()}
        return cls(path, path / "logs", **ports)

    @property
    def base(self) -> str:
        """The API's base URL."""
        return f"http://127.0.0.1:{self.api_port}"

    def remove(self) -> None:
        shutil.rmtree(self.path, ignore_errors=True)


def stack_env(home: Home, *, prefix: str, **extra: str) -> tuple[dict[str, str], str]:
    """The stack's environment (its own queues, `extra` added) and which database it uses.

    The database is DATABASE_URL when set (CI's Postgres: a benchmark creates tenants of its own
    and reads only those), else a SQLite file in `home`.
    """
    env = {
        **devstack.local_env(aws=f"http://127.0.0.1:{home.aws_port}", base=home.base),
        "SDSAAS_SQS_QUEUE_PREFIX": prefix,
        "SDSAAS_MODEL_CACHE_DIR": str(home.path / "model-cache"),
        **extra,
    }
    database = "DATABASE_URL" if os.environ.get("DATABASE_URL") else "own SQLite file"
    env.setdefault("DATABASE_URL", f"sqlite:///{home.path / f'{prefix}.sqlite3'}")
    return env, database


def use_env(env: dict[str, str]) -> None:
    """This process reads the stack's database and settings (before Django is set up)."""
    os.environ.update(env)
    os.environ["DJANGO_SETTINGS_MODULE"] = "sdsaas.settings"


def start_control_plane(stack: devstack.Stack, home: Home, *, scheduler: bool) -> None:
    """moto_server, the database (migrated, catalog seeded, tiny model built), Django set up in
    this process, then the API, the control worker and, with `scheduler`, beat (the sweeps).

    The API may still be booting on return: `wait_api` once the rest is started.
    """
    devstack.start_aws(stack, port=home.aws_port)
    devstack.prepare_database(stack, tiny=TINY_MODEL)
    import django

    django.setup()
    devstack.start_api(stack, port=home.api_port)
    devstack.start_control_worker(stack)
    if scheduler:
        devstack.start_scheduler(stack, schedule=home.path / "celerybeat-schedule")


def wait_api(stack: devstack.Stack, home: Home, timeout: float = 90) -> None:
    devstack.wait_http(f"{home.base}/healthz", timeout, stack)
