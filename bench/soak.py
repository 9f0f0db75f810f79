"""Soak run of the job queue (issue 3): real transcriptions while worker clusters are killed.

Starts one web server and two worker clusters on a fresh temporary DATA_DIR (SQLite by default,
or the DATABASE_URL / REDIS_URL of the environment), submits --runs transcriptions of jfk.flac
through `POST /api/transcribe` with `mode=async`, and while they run disrupts one whole cluster
every --kill-every seconds, alternating between the two: SIGKILL to its process group (a lost
machine), except once (--sigterm-at) a SIGTERM to its master (a graceful stop); a replacement
cluster is started at once. Every cluster runs MAX_CONCURRENT_JOBS=2 with short recovery
(JOB_LEASE_SECONDS=5, WORKER_RETRY_DELAYS=200,500,1000, POLL_INTERVAL=100).

Every --idempotent-every-th run is sent twice at the same time with one Idempotency-Key, and
once more after the soak.

When every run is finished, or --deadline passes, everything is stopped and the database is
checked (the invariants; any breach is listed in `problems` and the exit status is 1):

* every run the API answered exists once, no other run exists, and it is in a terminal state;
  its one job is in the same state, within its max_attempts;
* no job in the whole table is left `queued` or `processing`;
* each run's channel holds exactly one `done` event, nothing after it, and the `done` carries
  the run's final status; one `error` event with willRetry per attempt beyond the first;
* a succeeded run's text says "fellow Americans" exactly once, its segments in order, none
  repeated (a transcript written twice would show);
* requests sharing an Idempotency-Key got one run;
* a cluster stopped with SIGTERM exits 0 and leaves no worker row.

Prints one JSON document on stdout (progress goes to stderr).

PostgreSQL: the database named by DATABASE_URL is created when missing, then emptied
(`manage.py flush`), so its name must contain "soak" (`lingoloop_soak`); `lingoloop`,
`test_lingoloop` and `lingoloop_bench` are refused.

Usage:
  .venv/bin/python bench/soak.py [--runs 150] [--kill-every 8] [--deadline 900]
  DATABASE_URL=postgres://postgres@127.0.0.1:5432/lingoloop_soak \\
  REDIS_URL=redis://127.0.0.1:6379/0 .venv/bin/python bench/soak.py --runs 150
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter, defaultdict
from concurrent.futures import ThreadPoolExecutor
from contextlib import suppress
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.harness import (
    FORBIDDEN_DATABASES,
    JFK,
    TERMINAL,
    Proc,
    database_name,
    ensure_postgres_database,
    kill_group,
    log,
    manage,
    spawn,
    spread,
    start_web,
    stop_process,
)

PHRASE = "fellow americans"
# After its grace period a stopping cluster gets HARD_STOP_SECONDS (worker.py) before it kills
# its own processes; this script waits that long plus a margin.
HARD_STOP_SECONDS = 20
STOP_MARGIN_SECONDS = 20
# Lines counted in the process logs (evidence, not invariants).
LOG_MARKERS = {
    "traceback": re.compile(r"^Traceback"),
    "attempt_failed": re.compile(r"ERROR tasks_admin\.runner: job \S+ \(\S+\) attempt \d+ failed"),
    "lease_lost": re.compile(r"lease lost, this attempt writes nothing"),
    "result_dropped": re.compile(r"claim was gone: result dropped"),
    "reaped": re.compile(r"took back \d+ job\(s\) whose worker stopped renewing"),
    "handed_back": re.compile(r"handed back to the queue"),
}


# --- Submissions ----------------------------------------------------------------------------


@dataclass
class Submission:
    index: int
    key: str | None
    status: int | None = None
    run_id: str | None = None
    error: str | None = None
    seconds: float = 0.0


@dataclass
class Submitter:
    base: str
    token: str
    audio: bytes
    filename: str
    plan: list[tuple[int, str | None]]
    concurrency: int
    stop: threading.Event = field(default_factory=threading.Event)
    results: list[Submission] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    thread: threading.Thread | None = None

    def start(self) -> None:
        self.thread = threading.Thread(target=self._run, name="submitter", daemon=True)
        self.thread.start()

    @property
    def done(self) -> bool:
        return self.thread is not None and not self.thread.is_alive()

    def _run(self) -> None:
        with (
            httpx.Client(timeout=httpx.Timeout(60, connect=10)) as client,
            ThreadPoolExecutor(self.concurrency, thread_name_prefix="submit") as pool,
        ):
            for index, key in self.plan:
                pool.submit(self._one, client, index, key)

    def _one(self, client: httpx.Client, index: int, key: str | None) -> None:
        if self.stop.is_set():
            return
        result = send(client, self.base, self.token, self.audio, self.filename, index, key)
        with self.lock:
            self.results.append(result)


def send(
    client: httpx.Client,
    base: str,
    token: str,
    audio: bytes,
    filename: str,
    index: int,
    key: str | None,
) -> Submission:
    headers = {"Authorization": f"Bearer {token}"}
    if key:
        headers["Idempotency-Key"] = key
    result = Submission(index=index, key=key)
    started = time.monotonic()
    try:
        response = client.post(
            f"{base}/api/transcribe",
            headers=headers,
            files={"file": (filename, audio, "audio/flac")},
            data={"mode": "async"},
        )
        result.status = response.status_code
        if response.status_code in (200, 202):
            result.run_id = response.json()["runId"]
        else:
            result.error = response.text[:300]
    except httpx.HTTPError as exc:
        result.error = f"{type(exc).__name__}: {exc}"
    result.seconds = time.monotonic() - started
    return result


# --- Checks ---------------------------------------------------------------------------------


def histogram(counter: Counter[Any]) -> dict[str, int]:
    return {str(k): counter[k] for k in sorted(counter)}


def event_data(stored: str) -> dict[str, Any]:
    """A stored event's payload (this project stores the JSON text, which the storage encodes
    as JSON once more)."""
    value: Any = stored
    for _ in range(3):
        if not isinstance(value, str):
            break
        value = json.loads(value) if value else {}
    return value if isinstance(value, dict) else {}


def scan_logs(log_dir: Path) -> dict[str, int]:
    counts: Counter[str] = Counter()
    for path in log_dir.glob("*.log"):
        for line in path.read_text(errors="replace").splitlines():
            for name, marker in LOG_MARKERS.items():
                if marker.search(line):
                    counts[name] += 1
    return {name: counts[name] for name in LOG_MARKERS}


def verify(
    *,
    owner_id: int,
    expected_runs: int,
    submissions: list[Submission],
    resent: list[Submission],
    graceful_pids: set[int],
    disruptions: list[dict[str, Any]],
    problems: list[str],
) -> dict[str, Any]:
    from django.db import connection
    from django_eventstream.models import Event

    from tasks_admin.models import Job, Worker
    from transcription.models import TranscriptRun

    connection.close()
    answered = {s.run_id for s in submissions if s.run_id}
    runs = list(TranscriptRun.objects.filter(owner_id=owner_id).prefetch_related("jobs"))
    stored = {str(run.pk) for run in runs}
    lost = sorted(answered - stored)
    extra = sorted(stored - answered)
    if lost:
        problems.append(f"{len(lost)} run(s) answered by the API are not stored: {lost[:5]}")
    if extra:
        problems.append(f"{len(extra)} stored run(s) that no answer named: {extra[:5]}")
    if len(stored) != expected_runs:
        problems.append(f"{len(stored)} runs stored, {expected_runs} submitted")

    # Events of every run channel, in order (eid 0 is django-eventstream's placeholder).
    channels = {f"run-{run.pk}": run for run in runs}
    events: dict[str, list[tuple[int, str, dict[str, Any]]]] = defaultdict(list)
    for channel, kind, eid, data in (
        Event.objects.filter(channel__in=list(channels), eid__gt=0)
        .order_by("channel", "eid")
        .values_list("channel", "type", "eid", "data")
        .iterator()
    ):
        events[channel].append((eid, kind, event_data(data)))

    kills = {d["worker"]: d for d in disruptions if d.get("signal") == "SIGKILL" and d["worker"]}
    states: Counter[str] = Counter()
    attempts: Counter[int] = Counter()
    kinds: Counter[str] = Counter()
    queued_updates = 0
    last_attempt_s: list[float] = []
    done_counts: Counter[int] = Counter()
    failed: list[dict[str, Any]] = []
    per_run_problems: list[str] = []
    for run in runs:
        rid = str(run.pk)
        states[run.status] += 1
        if run.status not in TERMINAL:
            per_run_problems.append(f"run {rid} left {run.status}")
        jobs = list(run.jobs.all())
        if len(jobs) != 1:
            per_run_problems.append(f"run {rid} has {len(jobs)} jobs")
        for job in jobs:
            attempts[job.attempts] += 1
            if job.status != run.status:
                per_run_problems.append(f"run {rid} is {run.status} but its job is {job.status}")
            if job.attempts > job.max_attempts:
                per_run_problems.append(
                    f"job {job.pk} used {job.attempts} attempts of {job.max_attempts}"
                )
        run_events = events.get(f"run-{rid}", [])
        for _, kind, data in run_events:
            kinds[kind] += 1
            queued_updates += kind == "update" and data.get("status") == "queued"
        if run.status == "succeeded" and jobs and jobs[0].started_at and jobs[0].finished_at:
            last_attempt_s.append((jobs[0].finished_at - jobs[0].started_at).total_seconds())
        dones = [(eid, data) for eid, kind, data in run_events if kind == "done"]
        done_counts[len(dones)] += 1
        if len(dones) != 1:
            per_run_problems.append(
                f"run {rid} ({run.status}) has {len(dones)} done events: eids "
                f"{[eid for eid, _ in dones]}, statuses {[d.get('status') for _, d in dones]}; "
                f"last stored event: {run_events[-1][1] if run_events else None} "
                f"{run_events[-1][2].get('status') if run_events else ''}" + blame(run, kills)
            )
        if dones:
            first_done = dones[0][0]
            after = [(eid, kind) for eid, kind, _ in run_events if eid > first_done]
            if after:
                per_run_problems.append(f"run {rid}: events after its done: {after[:5]}")
            if dones[0][1].get("status") != run.status:
                per_run_problems.append(
                    f"run {rid} is {run.status} but its done event says {dones[0][1].get('status')}"
                )
        retried = sorted(
            int(data.get("attempt") or 0)  # 0: an error event without its attempt
            for _, kind, data in run_events
            if kind == "error" and data.get("willRetry") is True
        )
        if jobs and run.status in ("succeeded", "failed"):
            expected = list(range(1, jobs[0].attempts))
            if retried != expected:
                per_run_problems.append(
                    f"run {rid}: {jobs[0].attempts} attempts but error events with "
                    f"willRetry for attempts {retried} (expected {expected})"
                )
        if run.status == "succeeded":
            said = run.text.lower().count(PHRASE)
            if said != 1:
                per_run_problems.append(f"run {rid} text says {PHRASE!r} {said} times")
            starts = [segment["start"] for segment in run.segments]
            keys = [(segment["start"], segment["text"]) for segment in run.segments]
            if not starts or starts != sorted(starts) or len(set(keys)) != len(keys):
                per_run_problems.append(f"run {rid}: segments empty, unordered or repeated")
        elif run.status == "failed":
            failed.append(
                {
                    "runId": rid,
                    "errorCode": run.error_code,
                    "errorMessage": run.error_message,
                    "attempts": jobs[0].attempts if jobs else None,
                    "lastError": jobs[0].last_error if jobs else None,
                }
            )
    problems.extend(per_run_problems)

    # `done` fan-out: the run's channel, its owner's and the staff one.
    for channel in (f"user-{owner_id}", "runs"):
        announced = Counter(
            event_data(data).get("runId")
            for data in Event.objects.filter(channel=channel, type="done").values_list(
                "data", flat=True
            )
        )
        for run in runs:
            rid = str(run.pk)
            on_run = len([1 for _, kind, _ in events.get(f"run-{rid}", []) if kind == "done"])
            if announced[rid] != on_run:
                problems.append(
                    f"run {rid}: {on_run} done event(s) on its channel but {announced[rid]} "
                    f"on {channel!r}" + blame(run, kills)
                )
    unfinished_jobs = list(
        Job.objects.filter(status__in=["queued", "processing"]).values_list(
            "pk", "status", "locked_by"
        )
    )
    if unfinished_jobs:
        problems.append(f"{len(unfinished_jobs)} job(s) left unfinished: {unfinished_jobs[:5]}")

    # Idempotency: one run per key, whatever the answers.
    keyed: dict[str, list[Submission]] = defaultdict(list)
    for submission in [*submissions, *resent]:
        if submission.key:
            keyed[submission.key].append(submission)
    idempotency: Counter[str] = Counter()
    for key, sent in keyed.items():
        ids = {s.run_id for s in sent if s.run_id}
        in_db = TranscriptRun.objects.filter(owner_id=owner_id, idempotency_key=key).count()
        first = [s for s in sent if s not in resent]
        again = [s for s in sent if s in resent]
        idempotency[
            "/".join(sorted(str(s.status) for s in first))
            + (f" then {'/'.join(str(s.status) for s in again)}" if again else "")
        ] += 1
        if len(ids) != 1 or in_db != 1:
            problems.append(
                f"Idempotency-Key {key}: answers {[(s.status, s.run_id) for s in sent]}, "
                f"{in_db} run(s) stored"
            )

    leftover_workers = list(Worker.objects.values_list("pid", flat=True))
    not_deregistered = sorted(set(leftover_workers) & graceful_pids)
    if not_deregistered:
        problems.append(f"gracefully stopped cluster(s) left worker rows: pids {not_deregistered}")
    connection.close()
    return {
        "terminal_states": histogram(states),
        "attempts": histogram(attempts),
        "done_events_per_run": histogram(done_counts),
        "failed_runs": failed,
        "idempotency_answers": histogram(idempotency),
        "worker_rows_left": len(leftover_workers),
        "run_channel_events": {
            "total": sum(kinds.values()),
            "by_type": dict(kinds.most_common()),
            "queue_position_updates": queued_updates,
        },
        "succeeded_last_attempt_s": spread(last_attempt_s, digits=2),
    }


def blame(run: Any, kills: dict[str, dict[str, Any]]) -> str:
    """Evidence: which worker process ended the run's job, when, and when its cluster was
    SIGKILLed (the signed gap: kill time minus the job's finish)."""
    jobs = list(run.jobs.all())
    if not jobs:
        return ""
    job = jobs[0]
    holder = job.locked_by or "?"
    text = f"; job {job.status} by {holder}"
    if job.finished_at:
        text += f" at {job.finished_at.isoformat(timespec='milliseconds')}"
        kill = kills.get(holder.split(":")[0])
        if kill:
            gap = (datetime.fromisoformat(kill["at"]) - job.finished_at).total_seconds()
            text += f", its cluster SIGKILLed at {kill['at']} ({gap:+.3f} s)"
    return text


def jobs_held(cluster_pid: int) -> tuple[str | None, int]:
    """(worker id, jobs it is processing) of the cluster whose master has this pid."""
    from django.db import connection

    from tasks_admin.models import Job, Worker

    try:
        worker = Worker.objects.filter(pid=cluster_pid).order_by("-started_at").first()
        if worker is None:
            return None, 0
        return worker.id, Job.objects.filter(
            status="processing", locked_by__startswith=worker.holder_prefix
        ).count()
    finally:
        connection.close()


def unfinished_runs(owner_id: int) -> int:
    from django.db import connection

    from transcription.models import TranscriptRun

    try:
        return TranscriptRun.objects.filter(owner_id=owner_id).exclude(status__in=TERMINAL).count()
    finally:
        connection.close()


# --- Main -----------------------------------------------------------------------------------


def raise_interrupt(*_: object) -> None:
    raise KeyboardInterrupt


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=150)
    parser.add_argument("--kill-every", type=float, default=8.0, help="seconds")
    parser.add_argument("--sigterm-at", type=int, default=3, help="which disruption is SIGTERM")
    parser.add_argument("--deadline", type=float, default=900.0, help="seconds for the soak")
    parser.add_argument("--idempotent-every", type=int, default=10, help="0: none")
    parser.add_argument("--submit-concurrency", type=int, default=4)
    parser.add_argument("--grace", type=int, default=10, help="WORKER_SHUTDOWN_GRACE_SECONDS")
    parser.add_argument("--audio", type=Path, default=JFK)
    parser.add_argument("--keep", action="store_true", help="keep DATA_DIR and logs")
    return parser.parse_args(argv)


def soak(args: argparse.Namespace) -> dict[str, Any]:
    """The whole soak; its report (`problems` lists every invariant breached)."""
    signal.signal(signal.SIGTERM, raise_interrupt)

    wall_started = time.monotonic()
    database_url = os.environ.get("DATABASE_URL", "")
    redis_url = os.environ.get("REDIS_URL", "")
    data_dir = Path(tempfile.mkdtemp(prefix="lingoloop-soak-"))
    log_dir = data_dir / "logs"
    log_dir.mkdir()
    tag = uuid.uuid4().hex[:8]
    base_env = {
        **os.environ,
        "DATA_DIR": str(data_dir),
        "PYTHONUNBUFFERED": "1",
        "LOG_LEVEL": "INFO",
        # The soak's user submits everything at once: no per-user limits in the way.
        "USER_MAX_ACTIVE_RUNS": str(args.runs + 100),
        "UPLOADS_PER_MINUTE": str(100 * (args.runs + 100)),
        # The same recovery settings everywhere (the web process queues the jobs).
        "JOB_LEASE_SECONDS": "5",
        "WORKER_RETRY_DELAYS": "200,500,1000",
        "POLL_INTERVAL": "100",
        "WHISPER_CPU_THREADS": "1",
    }
    cluster_env = {
        **base_env,
        "MAX_CONCURRENT_JOBS": "2",
        "WORKER_SHUTDOWN_GRACE_SECONDS": str(args.grace),
    }
    cluster_stop_timeout = args.grace + HARD_STOP_SECONDS + STOP_MARGIN_SECONDS

    if database_url:
        ensure_postgres_database(database_url, marker="soak", forbidden=FORBIDDEN_DATABASES)
    log(f"DATA_DIR {data_dir}; database {database_name(database_url) or 'SQLite'}")
    manage(base_env, "migrate", "-v0")
    if database_url:
        manage(base_env, "flush", "--noinput", "-v0")
    os.environ.update({"DATA_DIR": str(data_dir), "LOG_LEVEL": "WARNING"})
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "lingoloop.settings")
    import django

    django.setup()
    from django.contrib.auth.models import User
    from django.db import connection
    from rest_framework.authtoken.models import Token

    user = User.objects.create_user(f"soak-{tag}", password=f"soak-pass-{tag}")
    token = Token.objects.create(user=user).key
    connection.close()

    problems: list[str] = []
    processes: list[Proc] = []
    clusters: list[Proc] = []
    draining: list[Proc] = []
    graceful_pids: set[int] = set()
    disruptions: list[dict[str, Any]] = []
    sigkills = sigterms = jobs_hit = 0
    cluster_serial = 0
    submitter: Submitter | None = None
    resent: list[Submission] = []
    soak_seconds = None
    finished = False

    def start_cluster() -> Proc:
        nonlocal cluster_serial
        cluster_serial += 1
        proc = spawn(
            f"cluster-{cluster_serial:02d}",
            [sys.executable, "manage.py", "worker"],
            cluster_env,
            log_dir,
        )
        processes.append(proc)
        return proc

    try:
        web, base = start_web(base_env, log_dir)
        processes.append(web)
        clusters = [start_cluster(), start_cluster()]

        plan: list[tuple[int, str | None]] = []
        for index in range(args.runs):
            key = None
            if args.idempotent_every and index % args.idempotent_every == 0:
                key = f"soak-{tag}-{index}"
            plan.append((index, key))
            if key:
                plan.append((index, key))  # the same request again, at the same time
        submitter = Submitter(
            base=base,
            token=token,
            audio=args.audio.read_bytes(),
            filename=args.audio.name,
            plan=plan,
            concurrency=args.submit_concurrency,
        )
        soak_started = time.monotonic()
        deadline = soak_started + args.deadline
        next_disruption = soak_started + args.kill_every
        next_report = soak_started + 15
        next_count = soak_started
        pending: int | None = None
        submitter.start()
        log(
            f"soak: {args.runs} runs ({len(plan)} requests), a cluster disrupted every "
            f"{args.kill_every} s, deadline {args.deadline:.0f} s"
        )

        while True:
            now = time.monotonic()
            if now >= deadline:
                problems.append(
                    f"deadline of {args.deadline:.0f} s passed with {pending} run(s) unfinished"
                )
                break
            if web.popen.poll() is not None:
                problems.append(f"web server exited with {web.popen.returncode}")
                break
            for slot, cluster in enumerate(clusters):
                if cluster.popen.poll() is not None:
                    problems.append(
                        f"{cluster.name} exited by itself with {cluster.popen.returncode}"
                    )
                    kill_group(cluster)
                    clusters[slot] = start_cluster()
            for proc in list(draining):
                assert proc.sigterm_at is not None
                if proc.popen.poll() is not None:
                    took = now - proc.sigterm_at
                    kill_group(proc)
                    draining.remove(proc)
                    graceful_pids.add(proc.pid)
                    disruptions.append(
                        {
                            "t": round(now - soak_started, 1),
                            "at": datetime.now(UTC).isoformat(timespec="milliseconds"),
                            "event": f"{proc.name} stopped after SIGTERM",
                            "exitCode": proc.popen.returncode,
                            "seconds": round(took, 1),
                        }
                    )
                    if proc.popen.returncode != 0:
                        problems.append(f"{proc.name} exited {proc.popen.returncode} after SIGTERM")
                elif now - proc.sigterm_at > cluster_stop_timeout:
                    problems.append(
                        f"{proc.name} still running {cluster_stop_timeout} s after SIGTERM"
                    )
                    kill_group(proc)
                    with suppress(subprocess.TimeoutExpired):
                        proc.popen.wait(timeout=10)
                    draining.remove(proc)

            if now >= next_count:
                pending = unfinished_runs(user.pk)
                next_count = now + 1.0
                if submitter.done and pending == 0 and not draining:
                    soak_seconds = time.monotonic() - soak_started
                    finished = True
                    break

            if now >= next_disruption:
                slot = (sigkills + sigterms) % 2
                victim = clusters[slot]
                worker_id, held = jobs_held(victim.pid)
                at = datetime.now(UTC)
                if sigkills + sigterms + 1 == args.sigterm_at:
                    victim.popen.send_signal(signal.SIGTERM)
                    victim.sigterm_at = now
                    draining.append(victim)
                    sigterms += 1
                    kind = "SIGTERM"
                else:
                    kill_group(victim, signal.SIGKILL)
                    try:
                        victim.popen.wait(timeout=30)
                    except subprocess.TimeoutExpired:
                        problems.append(f"{victim.name} survived SIGKILL for 30 s")
                    sigkills += 1
                    jobs_hit += held
                    kind = "SIGKILL"
                clusters[slot] = start_cluster()
                disruptions.append(
                    {
                        "t": round(now - soak_started, 1),
                        "at": at.isoformat(timespec="milliseconds"),
                        "event": f"{kind} {victim.name} -> {clusters[slot].name}",
                        "signal": kind,
                        "worker": worker_id,
                        "jobsProcessing": held,
                    }
                )
                next_disruption = now + args.kill_every
            if now >= next_report:
                log(
                    f"t={now - soak_started:.0f}s answered {len(submitter.results)}/{len(plan)}"
                    f" unfinished {pending} SIGKILL {sigkills} SIGTERM {sigterms}"
                )
                next_report = now + 15
            time.sleep(0.25)

        submitter.stop.set()
        if submitter.thread is not None:
            submitter.thread.join(timeout=120)
        if finished:
            # Every key once more, now that its run is over: the same run, 200.
            keys = sorted({key for _, key in plan if key})
            with httpx.Client(timeout=httpx.Timeout(60, connect=10)) as client:
                for key in keys:
                    index = int(key.rsplit("-", 1)[1])
                    again = send(client, base, token, submitter.audio, args.audio.name, index, key)
                    resent.append(again)
                    if again.status != 200:
                        problems.append(f"re-sent Idempotency-Key {key}: HTTP {again.status}")
        log("soak over; stopping every process")
    except KeyboardInterrupt:
        problems.append("interrupted")
    finally:
        if submitter is not None:
            submitter.stop.set()
        stop_started = time.monotonic()
        for proc in [*draining, *clusters]:
            rc, graceful = stop_process(proc, cluster_stop_timeout)
            if graceful:
                graceful_pids.add(proc.pid)
            if not graceful or rc != 0:
                problems.append(f"{proc.name} at the end: exit {rc}, stopped by itself {graceful}")
        for proc in processes:  # the web server, and anything else still alive
            if proc.popen.poll() is None:
                stop_process(proc, 15)
            kill_group(proc)
        stop_seconds = time.monotonic() - stop_started

    submissions = list(submitter.results) if submitter is not None else []
    failed_requests = [s for s in submissions if s.run_id is None]
    for s in failed_requests[:10]:
        problems.append(f"request #{s.index} (key {s.key}): HTTP {s.status} {s.error}")
    if len(failed_requests) > 10:
        problems.append(f"... {len(failed_requests) - 10} more failed requests")
    checks = verify(
        owner_id=user.pk,
        expected_runs=args.runs,
        submissions=submissions,
        resent=resent,
        graceful_pids=graceful_pids,
        disruptions=disruptions,
        problems=problems,
    )
    wall = time.monotonic() - wall_started
    keep = args.keep or bool(problems)
    report = {
        "database": f"postgresql/{database_name(database_url)}" if database_url else "sqlite",
        "events": "redis" if redis_url else "database",
        "runs": args.runs,
        "requests": len(submissions) + len(resent),
        "kills": {
            "sigkill": sigkills,
            "sigterm": sigterms,
            "jobs_processing_in_sigkilled_clusters": jobs_hit,
            "clusters_started": cluster_serial,
        },
        **checks,
        "log_lines": scan_logs(log_dir),
        "problems": problems,
        "wall_time_s": round(wall, 1),
        "submit_to_all_finished_s": round(soak_seconds, 1) if soak_seconds else None,
        "stop_s": round(stop_seconds, 1),
        "settings": {
            "kill_every_s": args.kill_every,
            "sigterm_at_disruption": args.sigterm_at,
            "deadline_s": args.deadline,
            "idempotent_every": args.idempotent_every,
            "cluster": {
                k: cluster_env[k]
                for k in (
                    "MAX_CONCURRENT_JOBS",
                    "JOB_LEASE_SECONDS",
                    "WORKER_RETRY_DELAYS",
                    "POLL_INTERVAL",
                    "WHISPER_CPU_THREADS",
                    "WORKER_SHUTDOWN_GRACE_SECONDS",
                )
            },
        },
        "disruptions": disruptions,
        "data_dir": str(data_dir) if keep else None,
    }
    if not keep:
        shutil.rmtree(data_dir, ignore_errors=True)
    return report


def measure(*, quick: bool = False) -> dict[str, Any]:
    """The registry's entry (`python -m bench soak`; not part of `all`): 150 runs (--quick: 20)."""
    return soak(parse_args(["--runs", "20"] if quick else []))


def main() -> int:
    report = soak(parse_args())
    print(json.dumps(report, indent=2))
    return 1 if report["problems"] else 0


if __name__ == "__main__":
    sys.exit(main())
