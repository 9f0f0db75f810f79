"""Log lines an operator can search: LOG_FORMAT=json gives one JSON object a line with the
request, run, job and worker ids that apply, text stays readable, a failed attempt is one
ERROR line with its traceback, every request has an X-Request-ID, and no secret is logged."""

from __future__ import annotations

import io
import json
import logging
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

import tests.job_handlers  # noqa: F401  (registers the test job types)
from lingoloop.logs import (
    ContextFilter,
    JsonFormatter,
    RedactSecretsFilter,
    TextFormatter,
    is_sane_request_id,
    log_context,
    request_id,
)
from tasks_admin.models import Job, JobStatus
from tasks_admin.runner import Outcome, run_job
from tasks_admin.services import job_enqueue
from tests.conftest import JFK, wait_until
from tests.test_settings import start_with

SECRET = "Zq9secretTOKENvalue42"
JOB_ID = "5f0b9a0e-1111-4222-8333-444455556666"


@pytest.fixture
def captured() -> Iterator[tuple[io.StringIO, logging.Handler]]:
    """A handler on the `probe` logger set up as settings.LOGGING sets up the console's."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.addFilter(RedactSecretsFilter())
    handler.addFilter(ContextFilter())
    logger = logging.getLogger("probe")
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    try:
        yield stream, handler
    finally:
        logger.removeHandler(handler)


def json_lines(text: str) -> list[dict[str, Any]]:
    """Every line of a log that is a JSON object (a process also prints plain lines)."""
    return [json.loads(line) for line in text.splitlines() if line.startswith("{")]


def _log_a_failure() -> None:
    logger = logging.getLogger("probe")
    with log_context(job_id=JOB_ID, run_id=None, worker_id="c1:host:12"):
        logger.info(
            "delivering to %s",
            f"https://example.com/hook?token={SECRET}",
            extra={"headers": {"Authorization": f"Bearer {SECRET}"}, "attempt": 2},
        )
        try:
            raise RuntimeError(f'body was {{"token": "{SECRET}"}} and "quotes"')
        except RuntimeError:
            logger.exception("attempt failed")
    logger.warning("after the attempt")


def test_json_lines_carry_time_level_logger_message_and_the_ids_that_apply(captured):
    stream, handler = captured
    handler.setFormatter(JsonFormatter())
    token = request_id.set("req-42")
    try:
        _log_a_failure()
    finally:
        request_id.reset(token)

    lines = stream.getvalue().splitlines()
    assert len(lines) == 3  # the traceback stays inside its line
    first, failure, after = map(json.loads, lines)
    assert list(first)[:8] == [
        "time",
        "level",
        "logger",
        "message",
        "request_id",
        "job_id",
        "worker_id",
        "headers",
    ]
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}\+00:00", first["time"])
    assert (first["level"], first["logger"]) == ("INFO", "probe")
    assert (first["job_id"], first["worker_id"], first["request_id"]) == (
        JOB_ID,
        "c1:host:12",
        "req-42",
    )
    assert "run_id" not in first  # None: does not apply
    assert first["attempt"] == 2
    assert failure["level"] == "ERROR"
    assert failure["exc_info"].startswith("Traceback (most recent call last):")
    assert "RuntimeError: body was" in failure["exc_info"]
    # Outside the attempt only the request's id applies.
    assert after["request_id"] == "req-42" and "job_id" not in after


def test_json_output_redacts_secrets_in_the_message_the_traceback_and_every_field(captured):
    stream, handler = captured
    handler.setFormatter(JsonFormatter())
    _log_a_failure()

    output = stream.getvalue()
    assert SECRET not in output
    first, failure, _ = json_lines(output)
    assert first["message"] == "delivering to https://example.com/hook?token=[redacted]"
    assert first["headers"] == {"Authorization": "[redacted]"}
    assert '{"token": "[redacted]"} and "quotes"' in failure["exc_info"]


def test_text_lines_stay_readable_with_short_ids_and_redacted_tracebacks(captured):
    stream, handler = captured
    handler.setFormatter(TextFormatter())
    _log_a_failure()

    output = stream.getvalue()
    assert SECRET not in output
    lines = output.splitlines()
    assert re.fullmatch(
        r"\S+ \S+ INFO probe \[job=5f0b9a0e worker=c1:host:12\]: "
        r"delivering to https://example\.com/hook\?token=\[redacted\]",
        lines[0],
    )
    assert " ERROR probe [job=5f0b9a0e worker=c1:host:12]: attempt failed" in lines[1]
    assert lines[2] == "Traceback (most recent call last):"
    assert lines[-1].endswith(" WARNING probe: after the attempt")


@pytest.mark.django_db(transaction=True)
def test_lines_logged_during_an_attempt_carry_its_job_run_and_worker_ids(captured):
    stream, handler = captured
    handler.setFormatter(JsonFormatter())
    job = job_enqueue(job_type="test.fail")
    runner = logging.getLogger("tasks_admin.runner")
    runner.addHandler(handler)
    try:
        assert run_job(str(job.pk)) is Outcome.RETRYING
    finally:
        runner.removeHandler(handler)

    lines = json_lines(stream.getvalue())
    assert [line["level"] for line in lines] == ["INFO", "ERROR"]  # started, failed
    job.refresh_from_db()
    for line in lines:
        assert line["job_id"] == str(job.pk)
        assert line["worker_id"] == job.locked_by or line["worker_id"].startswith("web:")
        assert "run_id" not in line  # this job serves no run
    assert "boom on attempt 1" in lines[1]["exc_info"]


@pytest.mark.parametrize(
    ("value", "kept"),
    [
        ("0f8fad5b-d9cb-469f-a165-70867728950e", True),
        ("5d41402abc4b2a76b9719d911017c592", True),
        ("Root=1-67891233-abcdef012345678912345678", True),
        ("", False),
        ("a" * 129, False),
        ("id with spaces", False),
        ("line\nbreak", False),
        ('{"level": "ERROR"}', False),
    ],
)
def test_only_a_sane_incoming_request_id_is_kept(value, kept):
    assert is_sane_request_id(value) is kept


def test_a_bad_log_format_stops_start_up_naming_the_variable(tmp_path):
    result = start_with(LOG_FORMAT="xml", DATA_DIR=str(tmp_path))

    assert result.returncode != 0
    assert "LOG_FORMAT='xml' must be one of text, json" in result.stderr


# --- Real processes -------------------------------------------------------------------------


@pytest.mark.slow
def test_a_failing_job_in_a_worker_logs_one_json_error_line_per_attempt_and_no_secret(
    processes,
):
    job = Job.objects.create(job_type="test.leaky", max_attempts=2)
    worker = processes.worker(
        JOB_HANDLER_MODULES="tests.job_handlers",
        LOG_FORMAT="json",
        WORKER_RETRY_DELAYS="100",
        TEST_SECRET=SECRET,
    )
    wait_until(lambda: Job.objects.get(pk=job.pk).status == JobStatus.FAILED, 60, "the job to fail")
    processes.stop(worker)

    job.refresh_from_db()
    output = processes.started[0][1].read_text()
    assert SECRET not in output
    lines = json_lines(output)
    errors = [line for line in lines if line["level"] == "ERROR"]
    assert [e["message"] for e in errors] == [
        f"job {job.pk} (test.leaky) attempt {n} failed" for n in (1, 2)
    ]
    for error in errors:
        assert error["job_id"] == str(job.pk)
        assert error["worker_id"] == job.locked_by  # the process that ran the attempt
        assert error["exc_info"].startswith("Traceback (most recent call last):")
        assert error["exc_info"].endswith(
            "RuntimeError: GET /api/runs/events?access_token=[redacted] "
            "with Authorization: Bearer [redacted]"
        )
    [leak, _] = [line for line in lines if line["logger"] == "tests.leaky"]
    assert leak["url"] == "https://example.com/?token=[redacted]"
    assert leak["job_id"] == str(job.pk)


def _web_log(service: Any) -> str:
    return Path(service.processes.started[0][1]).read_text()


@pytest.mark.slow
def test_every_answer_carries_an_x_request_id_that_its_log_lines_carry(service):
    service.start_web(LOG_FORMAT="json")
    headers = {"Authorization": f"Bearer {service.account.token}"}
    base = service.web_url

    kept = httpx.get(f"{base}/api/nothing-here", headers={**headers, "X-Request-ID": "abc-123"})
    made = httpx.get(f"{base}/api/nothing-here", headers=headers)
    replaced = httpx.get(f"{base}/api/nothing-here", headers={**headers, "X-Request-ID": "x" * 200})

    assert kept.status_code == 404 and kept.headers["X-Request-ID"] == "abc-123"
    assert re.fullmatch(r"[0-9a-f]{32}", made.headers["X-Request-ID"])
    assert re.fullmatch(r"[0-9a-f]{32}", replaced.headers["X-Request-ID"])
    assert made.headers["X-Request-ID"] != replaced.headers["X-Request-ID"]

    def access_lines() -> list[dict[str, Any]]:
        lines = json_lines(_web_log(service))
        return [
            line
            for line in lines
            if line["logger"] == "lingoloop.access" and "nothing-here" in line["message"]
        ]

    wait_until(lambda: len(access_lines()) == 3, 10, "the three access-log entries")
    for line in access_lines():
        assert (line["message"], line["status"]) == ("GET /api/nothing-here 404", 404)
    # Each answer's own id, on its one line: Django's "Not Found" warning is not logged too.
    assert [line["request_id"] for line in access_lines()] == [
        response.headers["X-Request-ID"] for response in (kept, made, replaced)
    ]
    assert not [
        line for line in json_lines(_web_log(service)) if line["logger"] == "django.request"
    ]


@pytest.mark.slow
def test_a_client_error_is_one_text_line_with_its_request_id(service):
    service.start_web()
    answer = httpx.get(f"{service.web_url}/no/such/page", headers={"X-Request-ID": "lost-1"})
    assert answer.status_code == 404

    def lines() -> list[str]:
        return [line for line in _web_log(service).splitlines() if "/no/such/page" in line]

    wait_until(lines, 10, "the access-log line")
    (line,) = lines()
    assert '"GET /no/such/page" 404' in line and line.endswith("[req=lost-1]")


@pytest.mark.parametrize(
    ("status", "kept"), [(400, False), (404, False), (429, False), (500, True)]
)
def test_django_request_warnings_are_kept_for_server_errors_only(status, kept):
    from lingoloop.logs import ServerErrorsOnly

    record = logging.LogRecord("django.request", logging.WARNING, __file__, 1, "x", (), None)
    record.status_code = status
    assert ServerErrorsOnly().filter(record) is kept


@pytest.mark.slow
def test_the_event_streams_answer_with_a_request_id_too(service):
    service.start_web()
    run = service.submit()
    with httpx.stream(
        "GET", service.events_url(run), headers={"X-Request-ID": "stream-1"}, timeout=30
    ) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        assert response.headers["X-Request-ID"] == "stream-1"


@pytest.mark.slow
def test_a_sync_run_logs_its_request_run_job_and_worker_ids_in_the_web_process(service):
    service.start_web(LOG_FORMAT="json")
    with JFK.open("rb") as audio:
        response = httpx.post(
            f"{service.web_url}/api/transcribe",
            headers={
                "Authorization": f"Bearer {service.account.token}",
                "X-Request-ID": "sync-upload-7",
            },
            files={"file": (JFK.name, audio)},
            data={"mode": "sync"},
            timeout=120,
        )
    assert response.status_code == 201, response.text
    assert response.headers["X-Request-ID"] == "sync-upload-7"
    run_id = response.json()["runId"]
    job = Job.objects.get(run_id=run_id)

    def started_line() -> dict[str, Any] | None:
        lines = json_lines(_web_log(service))
        return next((line for line in lines if line.get("job_id") == str(job.pk)), None)

    line = wait_until(started_line, 10, "the attempt's log line")
    assert line == {
        "time": line["time"],
        "level": "INFO",
        "logger": "tasks_admin.runner",
        "message": f"job {job.pk} (transcribe_sync) attempt 1 by {job.locked_by}",
        "request_id": "sync-upload-7",
        "run_id": run_id,
        "job_id": str(job.pk),
        "worker_id": job.locked_by,
    }


@pytest.mark.slow
@pytest.mark.parametrize("log_format", ["text", "json"])
def test_a_log_that_cannot_be_written_never_fails_a_request(service, log_format):
    """The web process's standard output and error on /dev/full, where every write fails with
    ENOSPC (a full disk under the log file, issue 18): its answers are the same as ever."""
    import subprocess
    import sys

    from tests.conftest import ROOT, free_port

    port = free_port()
    env = service.processes.env(LOG_FORMAT=log_format, LOG_LEVEL="DEBUG")
    with open("/dev/full", "wb") as full:
        web = subprocess.Popen(
            [sys.executable, "-m", "lingoloop.server", "-b", "127.0.0.1", "-p", str(port)],
            cwd=ROOT,
            env=env,
            stdout=full,
            stderr=full,
            start_new_session=True,
        )
    service.processes.started.append((web, Path("/dev/full")))
    service.web_url = base = f"http://127.0.0.1:{port}"

    def answers() -> bool:
        assert web.poll() is None, "the web process died of its log"
        try:
            return httpx.get(f"{base}/api/health", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    wait_until(answers, 60, "the web server to answer")
    for _ in range(3):  # an access log line each, an upload's, a 404's warning, a 500-free run
        assert service.api("GET", "/api/runs").status_code == 200
        assert service.api("GET", "/api/runs/not-a-run").status_code == 404
        run = service.post(JFK, mode="async")
        assert run.status_code == 202, run.text
        assert httpx.get(f"{base}/accounts/login/", timeout=10).status_code == 200
    assert web.poll() is None


class _FullDisk(io.StringIO):
    def write(self, text: str) -> int:
        raise OSError(28, "No space left on device")


def test_a_line_that_cannot_be_formatted_or_written_is_lost_and_nothing_else(settings):
    """The console handler of LOGGING, on a stream that fails every write: neither a record
    that cannot be formatted (its filters call getMessage) nor one that cannot be written
    raises out of the logging call, where it would fail the request that logged it."""
    from logging.config import DictConfigurator

    console = settings.LOGGING["handlers"]["console"]
    assert console["class"] == "lingoloop.logs.SafeStreamHandler"
    handler = DictConfigurator(settings.LOGGING).resolve(console["class"])(_FullDisk())
    handler.addFilter(RedactSecretsFilter())
    handler.addFilter(ContextFilter())
    logger = logging.getLogger("lingoloop.tests.unwritable")
    logger.addHandler(handler)
    logger.propagate = False
    try:
        logger.warning("%s and %s", "only one argument")
        logger.warning("a line for a full disk")
        logger.error("with a traceback", exc_info=ValueError("x"))
    finally:
        logger.removeHandler(handler)
