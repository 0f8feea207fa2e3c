"""The real GPU worker, observed: `celery -A tests.gpu_worker.boot_probe worker ...`.

It imports the entry point users run (`gpu_worker.worker`), so the worker boots exactly as theirs
does, and adds one handler: each time the worker is ready (connected, consuming), it appends what
the process has imported and what its app has registered, as a JSON line, to the file named by
SDSAAS_BOOT_PROBE_OUT. After the first boot it starts the worker again the way the job watchdog
does (`gpu_worker.tasks.end_process`: exec in place, from another thread), so the second line
shows how a restarted worker boots. Production code has no hook for this.
"""

from __future__ import annotations

import json
import os
import sys
import threading
from pathlib import Path
from typing import Any

from celery.signals import worker_ready

from gpu_worker.worker import app  # first: it sets the GPU role, before settings are read

__all__ = ["app"]


@worker_ready.connect
def _record_boot(sender: Any, **_: Any) -> None:
    modules = sorted(sys.modules)  # before this handler imports anything itself
    registry = sys.modules.get("django.apps")
    record = {
        "pid": os.getpid(),
        "app": sender.app.main,
        "tasks": sorted(sender.app.tasks),
        "modules": modules,
        "django_apps_ready": bool(registry and registry.apps.ready),
        "pool": type(sender.pool).__module__,
        "prefetch": sender.qos.value,
    }
    out = Path(os.environ["SDSAAS_BOOT_PROBE_OUT"])
    with out.open("a") as handle:
        handle.write(json.dumps(record) + "\n")
    if len(out.read_text().splitlines()) == 1:
        from gpu_worker.tasks import end_process  # imported by the worker already

        threading.Thread(target=end_process, kwargs={"restart": True}).start()
