from __future__ import annotations

import uuid
from datetime import timedelta

from django.conf import settings
from django.utils import timezone

from tasks_admin.models import Job
from tasks_admin.runner import current_worker_id


def job_enqueue(
    *,
    job_type: str,
    run_id: uuid.UUID | None = None,
    priority: int = 0,
    hold: bool = False,
    max_attempts: int | None = None,
) -> Job:
    """A new queued job. Call inside the transaction that creates what the job serves.
    `max_attempts`: by default, one and WORKER_MAX_RETRIES retries.

    With `hold`, this process picks the job at once (for JOB_PICK_HOLD_SECONDS), so no worker
    cluster picks it before this process runs it itself (a web process's sync run). If this
    process never starts it, the hold runs out and the queue takes it as any other job.
    """
    picked_by, picked_until = "", None
    if hold:
        picked_by = current_worker_id()
        picked_until = timezone.now() + timedelta(seconds=settings.JOB_PICK_HOLD_SECONDS)
    return Job.objects.create(
        job_type=job_type,
        run_id=run_id,
        priority=priority,
        max_attempts=max_attempts or settings.WORKER_MAX_RETRIES + 1,
        picked_by=picked_by,
        picked_until=picked_until,
    )
