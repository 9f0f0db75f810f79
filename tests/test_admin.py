"""The Django admin for the queue: the dashboard, run and job actions, and who may get in."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import time_machine
from django.contrib.auth.models import Permission
from django.test import Client
from django.urls import reverse
from django.utils import timezone

from tasks_admin.models import Job, JobStatus, Worker, WorkerState
from tests.conftest import Account, make_account
from transcription.models import Audio, RunMode, RunStatus, TranscriptRun

NOW = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)
DASHBOARD = "admin:tasks_admin_queue_dashboard"
WORKER_CONTROL = "admin:tasks_admin_worker_control"


def make_run(
    owner: Any,
    *,
    status: str,
    job_status: str | None = None,
    duration_ms: int = 120_000,
    filename: str = "talk.flac",
    created_at: datetime | None = None,
    finished_at: datetime | None = None,
    **job_fields: Any,
) -> tuple[TranscriptRun, Job]:
    """An Audio, its TranscriptRun and the run's Job, written directly as a worker would."""
    created_at = created_at or timezone.now()
    audio = Audio.objects.create(
        owner=owner,
        stored_name=uuid.uuid4().hex,
        original_filename=filename,
        content_type="audio/flac",
        size_bytes=1000,
        duration_ms=duration_ms,
        sha256="0" * 64,
        created_at=created_at,
    )
    run = TranscriptRun.objects.create(
        owner=owner,
        audio=audio,
        status=status,
        mode=RunMode.ASYNC,
        model="tiny.en",
        created_at=created_at,
        finished_at=finished_at,
    )
    job = Job.objects.create(
        job_type="transcribe_long",
        run=run,
        status=job_status or status,
        max_attempts=4,
        created_at=created_at,
        run_after=job_fields.pop("run_after", created_at),
        finished_at=finished_at,
        **job_fields,
    )
    return run, job


def logged_in(account: Account) -> Client:
    client = Client()
    client.force_login(account.user)  # type: ignore[arg-type]
    return client


@pytest.fixture
def operator(db) -> Account:  # type: ignore[no-untyped-def]
    """Staff without model permissions: enough for the dashboard, as for the worker API."""
    return make_account("operator", staff=True)


def run_action(client: Client, model: str, action: str, objects: list[Any]) -> str:
    """Run a changelist action on `objects`; the page it lands on, with its messages."""
    response = client.post(
        reverse(f"admin:{model}_changelist"),
        {"action": action, "_selected_action": [str(obj.pk) for obj in objects]},
        follow=True,
    )
    assert response.status_code == 200
    return response.content.decode()


# --- The dashboard --------------------------------------------------------------------------


@pytest.fixture
def seeded_queue(alice) -> None:  # type: ignore[no-untyped-def]
    hour_ago = NOW - timedelta(hours=1)
    # Waiting: the oldest has waited 10 minutes.
    for minutes in (10, 5, 1):
        make_run(alice.user, status=RunStatus.QUEUED, created_at=NOW - timedelta(minutes=minutes))
    # Queued but waiting for a retry delay: older, yet not in line, so not the oldest waiting.
    make_run(
        alice.user,
        status=RunStatus.QUEUED,
        created_at=NOW - timedelta(minutes=20),
        run_after=NOW + timedelta(seconds=30),
        attempts=1,
    )
    for _ in range(2):
        make_run(
            alice.user,
            status=RunStatus.PROCESSING,
            locked_by="c1:host:1",
            locked_until=NOW + timedelta(seconds=60),
            attempts=1,
        )
    make_run(alice.user, status=RunStatus.FAILED, finished_at=NOW - timedelta(minutes=30))
    make_run(alice.user, status=RunStatus.FAILED, finished_at=hour_ago - timedelta(minutes=1))
    # 30 + 60 minutes of audio finished within the hour: 1.5 audio minutes per wall minute.
    make_run(
        alice.user,
        status=RunStatus.SUCCEEDED,
        duration_ms=30 * 60_000,
        finished_at=NOW - timedelta(minutes=50),
    )
    make_run(
        alice.user,
        status=RunStatus.SUCCEEDED,
        duration_ms=60 * 60_000,
        finished_at=NOW - timedelta(minutes=2),
    )
    make_run(
        alice.user,
        status=RunStatus.SUCCEEDED,
        duration_ms=60 * 60_000,
        finished_at=hour_ago - timedelta(minutes=1),
    )
    make_run(alice.user, status=RunStatus.CANCELLED, finished_at=NOW - timedelta(minutes=3))
    Worker.objects.create(id="alive1", host="box-a", pid=11, last_seen=NOW - timedelta(seconds=2))
    Worker.objects.create(id="dead1", host="box-b", pid=22, last_seen=NOW - timedelta(minutes=5))


@pytest.mark.django_db
def test_staff_sees_dashboard_counts_oldest_wait_and_throughput(operator, seeded_queue):
    with time_machine.travel(NOW, tick=False):
        response = logged_in(operator).get(reverse(DASHBOARD))

    assert response.status_code == 200
    assert response.context["counts"] == {
        "queued": 4,
        "processing": 2,
        "failed_last_hour": 1,
        "succeeded_last_hour": 2,
    }
    assert response.context["oldest_waiting_seconds"] == 600
    assert response.context["throughput"] == 1.5
    page = response.content.decode()
    assert '<div id="figure-queued"><strong>4</strong>' in page
    assert "10 min 0 s" in page
    assert '<div id="figure-throughput"><strong>1.5</strong>' in page


@pytest.mark.django_db
def test_dashboard_marks_only_the_stale_worker_and_refreshes_itself(operator, seeded_queue):
    with time_machine.travel(NOW, tick=False):
        page = logged_in(operator).get(reverse(DASHBOARD)).content.decode()

    assert page.count("STALE") == 1
    dead_row = page[page.index("dead1") :]
    assert dead_row.index("STALE") < dead_row.index("</tr>")
    assert '<meta http-equiv="refresh" content="5">' in page


@pytest.mark.django_db
def test_admin_index_links_to_the_dashboard(operator):
    page = logged_in(operator).get(reverse("admin:index")).content.decode()

    assert f'href="{reverse(DASHBOARD)}"' in page


@pytest.mark.django_db
def test_pause_all_then_resume_one_from_the_dashboard(operator):
    Worker.objects.create(id="w1", host="a", pid=1)
    Worker.objects.create(id="w2", host="b", pid=2)
    Worker.objects.create(id="w3", host="c", pid=3, state=WorkerState.STOPPING)
    client = logged_in(operator)

    response = client.post(reverse(WORKER_CONTROL), {"state": "paused"})
    assert response.status_code == 302
    states = dict(Worker.objects.values_list("id", "state"))
    # A stopping cluster is on its way out: pausing must not bring it back into play.
    assert states == {"w1": "paused", "w2": "paused", "w3": "stopping"}

    client.post(reverse(WORKER_CONTROL), {"state": "running", "worker": "w2"})
    states = dict(Worker.objects.values_list("id", "state"))
    assert states == {"w1": "paused", "w2": "running", "w3": "stopping"}


@pytest.mark.django_db
def test_worker_control_refuses_a_post_without_csrf_token(operator):
    Worker.objects.create(id="w1", host="a", pid=1)
    client = Client(enforce_csrf_checks=True)
    client.force_login(operator.user)

    response = client.post(reverse(WORKER_CONTROL), {"state": "paused"})

    assert response.status_code == 403
    assert Worker.objects.get(pk="w1").state == WorkerState.RUNNING


# --- Run actions ----------------------------------------------------------------------------


@pytest.mark.django_db
def test_cancel_action_cancels_queued_flags_processing_and_reports_finished(root, alice):
    queued, queued_job = make_run(alice.user, status=RunStatus.QUEUED)
    processing, _ = make_run(
        alice.user, status=RunStatus.PROCESSING, locked_by="c1:h:1", attempts=1
    )
    done, _ = make_run(alice.user, status=RunStatus.SUCCEEDED, finished_at=timezone.now())

    page = run_action(
        logged_in(root), "transcription_transcriptrun", "cancel_runs", [queued, processing, done]
    )

    queued.refresh_from_db()
    queued_job.refresh_from_db()
    assert queued.status == RunStatus.CANCELLED
    assert queued_job.status == JobStatus.CANCELLED
    processing.refresh_from_db()
    assert processing.status == RunStatus.PROCESSING  # stops at the worker's next segment
    assert processing.cancel_requested_at is not None
    done.refresh_from_db()
    assert done.status == RunStatus.SUCCEEDED
    assert f"Run {done.id}: The run has already succeeded" in page
    assert "Cancelled (or asked to stop): 2 run(s)." in page


@pytest.mark.django_db
def test_retry_action_queues_failed_run_with_a_new_job_and_reports_refusals(root, alice):
    failed, old_job = make_run(
        alice.user,
        status=RunStatus.FAILED,
        finished_at=timezone.now(),
        attempts=4,
        last_error="boom",
    )
    TranscriptRun.objects.filter(pk=failed.pk).update(error_code="error", error_message="boom")
    succeeded, _ = make_run(alice.user, status=RunStatus.SUCCEEDED, finished_at=timezone.now())

    page = run_action(
        logged_in(root), "transcription_transcriptrun", "retry_runs", [failed, succeeded]
    )

    failed.refresh_from_db()
    assert failed.status == RunStatus.QUEUED
    assert failed.error_message == ""
    new_job = failed.jobs.exclude(pk=old_job.pk).get()
    assert (new_job.status, new_job.attempts) == (JobStatus.QUEUED, 0)
    assert Job.objects.waiting().filter(pk=new_job.pk).exists()
    succeeded.refresh_from_db()
    assert succeeded.status == RunStatus.SUCCEEDED
    assert f"Run {succeeded.id}: Only failed or cancelled runs can be retried" in page
    assert "Queued again: 1 run(s)." in page


# --- Job actions ----------------------------------------------------------------------------


@pytest.mark.django_db
def test_requeue_now_makes_a_delayed_held_job_due_and_skips_processing_ones(root, alice):
    _, delayed = make_run(
        alice.user,
        status=RunStatus.QUEUED,
        run_after=timezone.now() + timedelta(minutes=2),
        picked_by="c1:h:1",
        picked_until=timezone.now() + timedelta(seconds=15),
        attempts=1,
    )
    _, busy = make_run(
        alice.user,
        status=RunStatus.PROCESSING,
        locked_by="c1:h:1",
        locked_until=timezone.now() + timedelta(seconds=60),
    )
    assert not Job.objects.due().filter(pk=delayed.pk).exists()

    page = run_action(logged_in(root), "tasks_admin_job", "requeue_now", [delayed, busy])

    delayed.refresh_from_db()
    assert delayed.run_after <= timezone.now()
    assert (delayed.picked_by, delayed.picked_until) == ("", None)
    assert delayed.attempts == 1  # the attempts it used stay used
    assert Job.objects.due().filter(pk=delayed.pk).exists()
    busy.refresh_from_db()
    assert (busy.status, busy.locked_by) == (JobStatus.PROCESSING, "c1:h:1")
    assert "Requeued 1 job(s)." in page
    assert "only a queued job can be requeued" in page


@pytest.mark.django_db
def test_release_lease_hands_a_stuck_job_back_and_its_holder_loses_the_claim(root, alice):
    run, stuck = make_run(
        alice.user,
        status=RunStatus.PROCESSING,
        locked_by="c1:h:42",
        locked_until=timezone.now() + timedelta(minutes=5),
        attempts=1,
    )

    page = run_action(logged_in(root), "tasks_admin_job", "release_lease", [stuck])

    stuck.refresh_from_db()
    assert stuck.status == JobStatus.QUEUED
    assert stuck.attempts == 0  # not the job's fault: the attempt is given back
    assert (stuck.locked_by, stuck.locked_until) == ("", None)
    assert stuck.last_error == "handed back: released by an operator"
    assert Job.objects.due().filter(pk=stuck.pk).exists()
    run.refresh_from_db()
    assert run.status == RunStatus.QUEUED
    # The worker that held it finds out at its next heartbeat and writes nothing.
    assert not stuck.extend_lease("c1:h:42")
    assert "Released 1 job(s)." in page


@pytest.mark.django_db
def test_release_lease_leaves_a_queued_job_alone(root, alice):
    _, queued = make_run(alice.user, status=RunStatus.QUEUED)

    page = run_action(logged_in(root), "tasks_admin_job", "release_lease", [queued])

    queued.refresh_from_db()
    assert queued.status == JobStatus.QUEUED
    assert queued.last_error == ""
    assert "nothing to release" in page


@pytest.mark.django_db
def test_cancel_job_action_cancels_only_queued_jobs_without_a_run(root, alice):
    purge = Job.objects.create(job_type="purge")
    _, run_job = make_run(alice.user, status=RunStatus.QUEUED)

    page = run_action(logged_in(root), "tasks_admin_job", "cancel_jobs", [purge, run_job])

    purge.refresh_from_db()
    assert purge.status == JobStatus.CANCELLED
    assert purge.finished_at is not None
    run_job.refresh_from_db()
    assert run_job.status == JobStatus.QUEUED
    assert "cancel the run instead" in page


@pytest.mark.django_db
def test_job_list_shows_owner_file_and_lease_and_searches_by_filename(root, alice):
    make_run(
        alice.user,
        status=RunStatus.PROCESSING,
        filename="board-meeting.mp3",
        locked_by="c1:h:7",
        locked_until=timezone.now() + timedelta(seconds=60),
    )
    make_run(alice.user, status=RunStatus.QUEUED, filename="other.wav")
    client = logged_in(root)

    page = client.get(reverse("admin:tasks_admin_job_changelist"), {"q": "board"}).content.decode()

    assert "board-meeting.mp3" in page
    assert "other.wav" not in page
    assert "alice" in page
    assert "c1:h:7" in page


@pytest.mark.django_db
def test_run_list_finds_a_run_by_its_id(root, alice):
    wanted, _ = make_run(alice.user, status=RunStatus.QUEUED, filename="wanted.flac")
    make_run(alice.user, status=RunStatus.QUEUED, filename="unwanted.flac")

    page = (
        logged_in(root)
        .get(reverse("admin:transcription_transcriptrun_changelist"), {"q": str(wanted.id)})
        .content.decode()
    )

    assert "wanted.flac" in page
    assert "unwanted.flac" not in page


@pytest.mark.django_db
def test_every_queue_list_and_detail_page_renders(root, alice):
    run, job = make_run(
        alice.user, status=RunStatus.PROCESSING, locked_by="c1:h:1", last_error="x" * 500
    )
    Job.objects.create(job_type="purge")
    Worker.objects.create(id="w1", host="a", pid=1)
    client = logged_in(root)
    pages = [
        reverse("admin:transcription_audio_changelist"),
        reverse("admin:transcription_audio_change", args=[run.audio_id]),
        reverse("admin:transcription_transcriptrun_changelist"),
        reverse("admin:transcription_transcriptrun_change", args=[run.pk]),
        reverse("admin:tasks_admin_job_changelist"),
        reverse("admin:tasks_admin_job_changelist") + f"?run__owner__id__exact={alice.user.pk}",
        reverse("admin:tasks_admin_job_change", args=[job.pk]),
        reverse("admin:tasks_admin_worker_changelist"),
        reverse("admin:tasks_admin_worker_change", args=["w1"]),
    ]

    for page in pages:
        assert client.get(page).status_code == 200, page


@pytest.mark.django_db
def test_actions_need_change_permission_not_just_view(alice):
    viewer = make_account("viewer", staff=True)
    viewer.user.user_permissions.add(  # type: ignore[attr-defined]
        Permission.objects.get(codename="view_job")
    )
    _, held = make_run(
        alice.user,
        status=RunStatus.PROCESSING,
        locked_by="c1:h:1",
        locked_until=timezone.now() + timedelta(seconds=60),
    )

    run_action(logged_in(viewer), "tasks_admin_job", "release_lease", [held])

    held.refresh_from_db()
    assert (held.status, held.locked_by) == (JobStatus.PROCESSING, "c1:h:1")


# --- Who may get in -------------------------------------------------------------------------


@pytest.mark.django_db
@pytest.mark.parametrize("url", ["admin:index", DASHBOARD, "admin:tasks_admin_job_changelist"])
def test_non_staff_user_is_sent_to_the_admin_login(alice, url):
    path = reverse(url)

    response = logged_in(alice).get(path)

    assert response.status_code == 302
    assert response["Location"].startswith(reverse("admin:login"))


@pytest.mark.django_db
def test_non_staff_cannot_pause_workers_through_the_dashboard(alice):
    Worker.objects.create(id="w1", host="a", pid=1)

    response = logged_in(alice).post(reverse(WORKER_CONTROL), {"state": "paused"})

    assert response.status_code == 302
    assert response["Location"].startswith(reverse("admin:login"))
    assert Worker.objects.get(pk="w1").state == WorkerState.RUNNING


@pytest.mark.django_db
def test_worker_api_is_403_for_non_staff_and_200_for_staff(alice, operator):
    assert alice.client.get("/api/admin/worker").status_code == 403
    assert operator.client.get("/api/admin/worker").status_code == 200
