from __future__ import annotations

import uuid

from django.conf import settings

from tasks_admin.models import Job


def job_enqueue(*, job_type: str, run_id: uuid.UUID | None = None, priority: int = 0) -> Job:
    """A new queued job. Call inside the transaction that creates what the job serves."""
    return Job.objects.create(
        job_type=job_type,
        run_id=run_id,
        priority=priority,
        max_attempts=settings.WORKER_MAX_RETRIES + 1,
    )
