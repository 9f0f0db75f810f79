"""What `GET /api/health` finds: the database, the workers, and the machine under both.

`ok` needs all of it well. `degraded`: the database answers but something will fail or stall
(no worker alive, free space below MIN_FREE_DISK_BYTES in a folder of this web process or at a
worker, which then picks no jobs, a model whose files are damaged); `problems` says what, in
sentences that name no path (no login is needed to read them). `error`: no database.
"""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.db import connection

from lingoloop import disk
from tasks_admin.handlers import machine_problems
from tasks_admin.models import Worker


def service_health() -> dict[str, Any]:
    folders = disk.space()
    problems = [disk.describe_low(folder) for folder in folders if folder.low]
    health: dict[str, Any] = {
        "disk": folders,
        "min_free_disk_bytes": settings.MIN_FREE_DISK_BYTES,
        "problems": problems,
    }
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
    except Exception as exc:
        problems.insert(0, "the database does not answer")
        return {**health, "status": "error", "database": f"error: {exc}", "workers_alive": None}
    workers = list(Worker.objects.alive().order_by("started_at"))
    if not workers:
        problems.append("no worker cluster is alive: queued runs wait")
    for worker in workers:
        if worker.low_disk:
            problems.append(f"worker {worker.id} picks no jobs: {worker.low_disk}")
        problems.extend(f"worker {worker.id}: {problem}" for problem in worker.problems or [])
    problems.extend(f"this web process: {problem}" for problem in machine_problems())
    return {
        **health,
        "status": "degraded" if problems else "ok",
        "database": "ok",
        "workers_alive": len(workers),
    }
