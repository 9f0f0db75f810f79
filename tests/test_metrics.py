"""/metrics: who may read it, what the job table shows there, and the counters of real web
and worker processes added up across processes, the dead ones' included."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
import time_machine
from django.test import Client
from django_eventstream.models import Event
from prometheus_client.parser import text_string_to_metric_families

from lingoloop import metrics
from lingoloop.env import env_networks
from tasks_admin.models import Job, JobStatus
from tasks_admin.services import job_enqueue
from tests.conftest import JFK, make_account, wait_until
from tests.sseclient import EventStream
from transcription.models import TranscriptRun

TOKEN = "metrics-token-for-the-tests-0123456789"

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def parse(text: str) -> Samples:
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    """A sample's value; 0 when it is not there (a counter nothing has moved yet)."""
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def staff_client() -> Client:
    client = Client()
    client.force_login(make_account("metrics-staff", staff=True).user)  # type: ignore[arg-type]
    return client


def scrape_here(client: Client) -> Samples:
    response = client.get("/metrics")
    assert response.status_code == 200, response.content
    return parse(response.content.decode())


# --- Who may read it ------------------------------------------------------------------------


@pytest.mark.django_db
def test_anonymous_clients_are_refused_in_the_api_error_shape():
    response = Client().get("/metrics")

    assert response.status_code == 401
    assert response["WWW-Authenticate"] == "Bearer"
    assert response.json()["error"]["code"] == "not_authenticated"


@pytest.mark.django_db
def test_a_user_who_is_not_staff_is_forbidden_and_staff_may_read():
    alice = Client()
    alice.force_login(make_account("alice").user)  # type: ignore[arg-type]
    assert alice.get("/metrics").status_code == 403

    response = staff_client().get("/metrics")
    assert response.status_code == 200
    assert response["Content-Type"].startswith("text/plain; version=0.0.4")
    assert b"# TYPE lingoloop_jobs gauge" in response.content


@pytest.mark.django_db
def test_the_metrics_token_opens_it_and_any_other_bearer_token_is_refused(settings):
    settings.METRICS_TOKEN = TOKEN
    client = Client()

    assert client.get("/metrics", headers={"Authorization": f"Bearer {TOKEN}"}).status_code == 200
    wrong = client.get("/metrics", headers={"Authorization": f"Bearer {TOKEN}x"})
    assert wrong.status_code == 401
    assert wrong.json()["error"]["code"] == "invalid_metrics_token"

    settings.METRICS_TOKEN = ""  # none configured: no bearer token opens it
    assert client.get("/metrics", headers={"Authorization": "Bearer "}).status_code == 401


@pytest.mark.django_db
def test_allowed_addresses_need_no_credentials_and_a_forged_forwarded_for_is_not_believed(
    settings,
):
    settings.METRICS_ALLOWED_IPS = ["10.1.0.0/16", "::1/128"]
    client = Client()

    assert client.get("/metrics", REMOTE_ADDR="10.1.2.3").status_code == 200
    assert client.get("/metrics", REMOTE_ADDR="::ffff:10.1.2.3").status_code == 200
    assert client.get("/metrics", REMOTE_ADDR="10.2.0.1").status_code == 401
    forged = {"REMOTE_ADDR": "192.0.2.9", "HTTP_X_FORWARDED_FOR": "10.1.2.3"}
    assert client.get("/metrics", **forged).status_code == 401
    settings.TRUSTED_PROXY_COUNT = 1  # behind one proxy, whose address is REMOTE_ADDR
    assert client.get("/metrics", **forged).status_code == 200


def test_allowed_addresses_refuse_a_bad_value_by_name(monkeypatch):
    monkeypatch.setenv("METRICS_ALLOWED_IPS", "10.0.0.1, 192.168.0.0/16, intranet")
    with pytest.raises(Exception, match=r"METRICS_ALLOWED_IPS=.*'intranet'"):
        env_networks("METRICS_ALLOWED_IPS", [])
    monkeypatch.setenv("METRICS_ALLOWED_IPS", "10.0.0.1, 192.168.1.7/16")
    assert env_networks("METRICS_ALLOWED_IPS", []) == ["10.0.0.1/32", "192.168.0.0/16"]


# --- What it shows --------------------------------------------------------------------------


@pytest.mark.django_db
def test_jobs_queue_depth_and_oldest_age_are_read_from_the_job_table():
    now = datetime(2030, 5, 1, 12, 0, tzinfo=UTC)
    with time_machine.travel(now, tick=False):
        for age in (90, 30):  # due, waiting
            Job.objects.create(job_type="transcribe_long", run_after=now - timedelta(seconds=age))
        # Queued but waiting out a retry delay: not in the queue's depth.
        Job.objects.create(job_type="transcribe_long", run_after=now + timedelta(seconds=60))
        Job.objects.create(job_type="transcribe_long", status=JobStatus.PROCESSING)
        Job.objects.create(job_type="purge_audio", status=JobStatus.SUCCEEDED)

        samples = scrape_here(staff_client())

    def jobs(job_type: str, status: str) -> float:
        return value(samples, "lingoloop_jobs", job_type=job_type, status=status)

    assert jobs("transcribe_long", "queued") == 3
    assert jobs("transcribe_long", "processing") == 1
    assert jobs("transcribe_long", "failed") == 0  # there, at 0, not missing
    assert jobs("purge_audio", "succeeded") == 1
    assert value(samples, "lingoloop_queue_depth", job_type="transcribe_long") == 2
    assert value(samples, "lingoloop_queue_oldest_age_seconds", job_type="transcribe_long") == 90
    assert value(samples, "lingoloop_queue_oldest_age_seconds", job_type="purge_audio") == 0


@pytest.mark.django_db
def test_request_latency_is_labelled_by_url_pattern_not_by_path(alice):
    client = staff_client()
    route = {"route": "api/runs/<uuid:run_id>", "method": "GET", "status": "4xx"}
    name = "lingoloop_http_request_duration_seconds_count"
    before = scrape_here(client)

    for _ in range(3):
        assert alice.client.get(f"/api/runs/{uuid.uuid4()}").status_code == 404

    after = scrape_here(client)
    assert value(after, name, **route) - value(before, name, **route) == 3
    routes = {dict(labels)["route"] for sample, labels in after if sample == name}
    assert not [route for route in routes if re.search(r"[0-9a-f]{8}-[0-9a-f]{4}-", route)]


# --- The multiprocess folder ----------------------------------------------------------------


@pytest.fixture
def folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A metrics folder of its own (only `prepare_folder` and the processes started here use
    it; this test process writes no metric while it is set)."""
    path = tmp_path / "metrics"
    path.mkdir()
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(path))
    return path


COUNTING = (
    "from prometheus_client import Counter, Gauge; import sys, time; "
    "Counter('jobs', 'jobs').inc(); "
    "Gauge('open', 'open', multiprocess_mode='livesum').inc(); "
    "print('ready', flush=True); time.sleep(float(sys.argv[1]))"
)


def counting_process(folder: Path, seconds: float) -> subprocess.Popen[str]:
    process = subprocess.Popen(
        [sys.executable, "-c", COUNTING, str(seconds)],
        env={**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(folder)},
        stdout=subprocess.PIPE,
        text=True,
    )
    assert process.stdout is not None and process.stdout.readline() == "ready\n"
    return process


def names(folder: Path) -> set[str]:
    return {path.name for path in folder.iterdir()}


def test_a_start_beside_running_processes_keeps_dead_counters_and_a_fresh_start_wipes_all(
    folder,
):
    dead = counting_process(folder, 0)
    dead.wait()
    alive = counting_process(folder, 60)
    try:
        metrics.prepare_folder()
        assert names(folder) == {
            f"counter_{dead.pid}.db",  # its jobs happened: totals must not go back
            f"counter_{alive.pid}.db",
            f"gauge_livesum_{alive.pid}.db",
        }
    finally:
        alive.kill()
        alive.wait()

    metrics.prepare_folder()
    assert names(folder) == set()


def test_a_scrape_forgets_the_gauges_of_processes_that_died(folder):
    dead = counting_process(folder, 0)
    dead.wait()

    samples = parse(metrics.exposition(None)[0].decode())

    assert value(samples, "open") == 0
    assert value(samples, "jobs_total") == 1
    assert names(folder) == {f"counter_{dead.pid}.db"}


# --- Real processes -------------------------------------------------------------------------


class Scraper:
    def __init__(self, base: str) -> None:
        self.base = base

    def __call__(self) -> Samples:
        response = httpx.get(
            f"{self.base}/metrics", headers={"Authorization": f"Bearer {TOKEN}"}, timeout=30
        )
        assert response.status_code == 200, response.text
        return parse(response.text)


@pytest.fixture
def open_streams() -> Iterator[list[EventStream]]:
    streams: list[EventStream] = []
    yield streams
    for stream in streams:
        stream.close()


TEST_JOBS = {"JOB_HANDLER_MODULES": "tests.job_handlers", "WORKER_RETRY_DELAYS": "50"}


@pytest.mark.slow
def test_a_scrape_after_a_few_jobs_counts_them_across_web_and_worker_processes(
    service, open_streams
):
    scrape = Scraper(service.start_web(METRICS_TOKEN=TOKEN, **TEST_JOBS))
    runs = [service.submit() for _ in range(2)]
    watched = service.events(runs[0])
    everyone = EventStream(
        f"{service.web_url}/api/runs/events",
        headers={"Authorization": f"Bearer {service.account.token}"},
    )
    open_streams += [watched, everyone]
    # Retried until its attempts are spent, then failed for good; and failed at once.
    retried = job_enqueue(job_type="test.fail")
    job_enqueue(job_type="test.permanent")

    service.worker(**TEST_JOBS)
    for run in runs:
        service.wait_for_status(run["runId"], "succeeded")
    wait_until(
        lambda: Job.objects.filter(status=JobStatus.FAILED).count() == 2, 60, "the failed jobs"
    )
    watched.wait_for("done", timeout=30)
    # One per event (eid 0 is the store's own row of each channel).
    stored_events = Event.objects.filter(channel__startswith="run-", eid__gt=0)

    # Delivered into the streams right after each commit, by whichever process committed.
    def all_delivered() -> Samples | None:
        samples = scrape()
        delivered = value(samples, "lingoloop_events_delivered_total")
        return samples if delivered == stored_events.count() else None

    samples = wait_until(all_delivered, 30, "every stored event to be counted as delivered")
    assert isinstance(samples, dict)
    assert value(samples, "lingoloop_events_delivered_total") > 10

    long = {"job_type": "transcribe_long"}
    assert value(samples, "lingoloop_job_attempts_total", **long) == 2
    assert value(samples, "lingoloop_job_queue_wait_seconds_count", **long) == 2
    assert value(samples, "lingoloop_job_run_seconds_count", **long, outcome="succeeded") == 2
    assert value(samples, "lingoloop_jobs", **long, status="succeeded") == 2
    assert value(samples, "lingoloop_queue_depth", **long) == 0
    assert value(samples, "lingoloop_workers", state="running") == 1

    fail, permanent = {"job_type": "test.fail"}, {"job_type": "test.permanent"}
    retried.refresh_from_db()
    attempts = retried.attempts
    assert attempts == retried.max_attempts > 1
    assert value(samples, "lingoloop_job_attempts_total", **fail) == attempts
    assert value(samples, "lingoloop_job_run_seconds_count", **fail, outcome="retrying") == (
        attempts - 1
    )
    assert value(samples, "lingoloop_job_run_seconds_count", **fail, outcome="failed") == 1
    assert value(samples, "lingoloop_job_retries_total", **fail, code="error") == attempts - 1
    assert value(samples, "lingoloop_job_failures_total", **fail, code="error") == 1
    assert value(samples, "lingoloop_job_failures_total", **permanent, code="bad_input") == 1
    assert value(samples, "lingoloop_job_retries_total", **permanent, code="bad_input") == 0

    # Real-time factor: the audio seconds of both runs, and the wall seconds they took.
    audio_seconds = sum(
        run.audio.duration_ms / 1000
        for run in TranscriptRun.objects.select_related("audio").filter(
            pk__in=[r["runId"] for r in runs]
        )
    )
    engine = {"model": "tiny.en", "mode": "async"}
    assert value(samples, "lingoloop_transcribed_audio_seconds_total", **engine) == pytest.approx(
        audio_seconds
    )
    assert value(samples, "lingoloop_transcription_seconds_total", **engine) > 0
    assert value(samples, "lingoloop_transcription_realtime_factor_count", **engine) == 2

    assert value(samples, "lingoloop_upload_bytes_count") == 2
    assert value(samples, "lingoloop_upload_bytes_sum") == 2 * JFK.stat().st_size
    upload = {"route": "api/transcribe", "method": "POST", "status": "2xx"}
    assert value(samples, "lingoloop_http_request_duration_seconds_count", **upload) == 2
    opened = {"method": "GET", "status": "2xx"}
    for route in ("api/runs/<uuid:run_id>/events", "api/runs/events"):
        assert (
            value(samples, "lingoloop_http_request_duration_seconds_count", route=route, **opened)
            == 1
        )

    # The run's stream ended at `done`; the user's stream is still open.
    sent = [event for event in watched.events if event.name != "heartbeat"]
    assert value(samples, "lingoloop_sse_events_sent_total", stream="run") == len(sent)
    assert value(samples, "lingoloop_sse_streams_open", stream="run") == 0
    assert value(samples, "lingoloop_sse_streams_open", stream="user") == 1
    everyone.close()
    wait_until(
        lambda: value(scrape(), "lingoloop_sse_streams_open", stream="user") == 0,
        30,
        "the closed stream to be counted as closed",
    )


@pytest.mark.slow
def test_counters_of_killed_processes_still_count_and_their_open_streams_do_not(
    service, open_streams
):
    scrape = Scraper(service.start_web(METRICS_TOKEN=TOKEN, **TEST_JOBS))
    job = job_enqueue(job_type="test.slow")
    doomed = service.worker(**TEST_JOBS, JOB_LEASE_SECONDS="3", TEST_SLOW_SECONDS="600")
    wait_until(lambda: Job.objects.get(pk=job.pk).status == JobStatus.PROCESSING, 60, "a claim")
    # The claim commits a moment before the attempt is counted: kill after both.
    wait_until(
        lambda: value(scrape(), "lingoloop_job_attempts_total", job_type="test.slow") == 1,
        30,
        "the attempt to be counted",
    )
    os.killpg(doomed.pid, signal.SIGKILL)  # the whole cluster, and the attempt it counted
    doomed.wait()
    service.worker(**{**TEST_JOBS, "TEST_SLOW_SECONDS": "0.2"})
    wait_until(lambda: Job.objects.get(pk=job.pk).status == JobStatus.SUCCEEDED, 90, "the rerun")

    samples = scrape()
    slow = {"job_type": "test.slow"}
    assert value(samples, "lingoloop_job_attempts_total", **slow) == 2  # one by the dead one
    assert value(samples, "lingoloop_job_lease_expiries_total", **slow) == 1
    assert value(samples, "lingoloop_job_retries_total", **slow, code="worker_lost") == 1
    assert value(samples, "lingoloop_job_run_seconds_count", **slow, outcome="succeeded") == 1

    # A second web process on the machine: its open stream is counted by the first one's
    # scrape, until it is killed.
    second = service.processes.web(METRICS_TOKEN=TOKEN)
    second_process = service.processes.started[-1][0]
    open_streams.append(
        EventStream(
            f"{second}/api/runs/events",
            headers={"Authorization": f"Bearer {service.account.token}"},
        )
    )
    wait_until(
        lambda: value(scrape(), "lingoloop_sse_streams_open", stream="user") == 1,
        30,
        "the other process's stream to be counted",
    )
    os.killpg(second_process.pid, signal.SIGKILL)
    second_process.wait()
    assert value(scrape(), "lingoloop_sse_streams_open", stream="user") == 0
