"""Benchmark: a 20-minute recording split across the cluster, one worker cluster against two.

On a fresh data directory (SQLite, or the DATABASE_URL / REDIS_URL you give it), with the
default chunk settings (runs over CHUNK_LONGER_THAN_SECONDS=900 are cut into pieces of about
CHUNK_SECONDS=150): one web process and one worker cluster of one process and one thread
(MAX_CONCURRENT_JOBS=1, WHISPER_CPU_THREADS=1) transcribe the file, upload → `done` on its
event stream; then a second such cluster joins the same server and the same file is sent
again. On a 2-core machine the two clusters have a core each: the target is that two take
at most 0.6 of the time one takes. That is done twice (ROUNDS), the second time two clusters
first, and the ratio is that of the sums. Both clusters run throughout, warm (each has
transcribed a short file first, so its model is loaded, as in a cluster that has been up for
a while); for "one cluster" the second is paused as an operator pauses one (its row's state).

Then the same cluster transcribes the file unsplit (through a web process with
CHUNK_LONGER_THAN_SECONDS=0): the split's cost on one cluster, and the word error rates of
the split and the unsplit transcripts against the reference (jfk.flac's words, said again and
again), which should be within a point of each other. Last, faster-whisper alone on a
piece's worth of speech, in one one-thread process and then in two at once: the best ratio
this machine allows two clusters on the chunks' share of the work (on this project's 2-core
VM, two processes side by side each took 0.94-1.33 times as long as one alone, from one run
to the next; it times faster-whisper's own pipeline, not the service's windows, so it is a
guide, not a bound).

Usage: .venv/bin/python -m bench chunked [--quick]   (--quick: 5 minutes, 75 s pieces)
   or: .venv/bin/python bench/chunked.py [--quick]   (the figures as JSON)
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.harness import (
    JFK,
    Proc,
    Service,
    cpu_used,
    fresh_stack,
    log,
    manage,
    repeats_for,
    speech_file,
    start_web,
    start_worker,
    stop_process,
    tree_cpu_seconds,
    whisper_alone,
)
from bench.wer import JFK_REFERENCE, word_error_rate

ONE_THREAD_CLUSTER = {"MAX_CONCURRENT_JOBS": "1", "WHISPER_CPU_THREADS": "1"}
# (CHUNK_LONGER_THAN_SECONDS, CHUNK_SECONDS): the defaults, and --quick's for 5 minutes.
CHUNKS = ("900", "150")
QUICK_CHUNKS = ("120", "75")


@dataclass
class Measured:
    seconds: float  # from sending the upload to reading `done` on its stream
    run: dict[str, Any]  # the finished run
    cpu: dict[str, float]  # CPU seconds each process used meanwhile
    timeline: list[dict[str, Any]]  # the run's jobs


def upload_to_done(service: Service, audio: Path, processes: list[Proc]) -> Measured:
    """Send `audio`, follow its run to `done`; what `processes` used meanwhile."""
    cpu_before = tree_cpu_seconds(processes)
    started = time.perf_counter()
    run = service.submit(audio)
    service.follow_until_done(run, timeout=1800)
    seconds = time.perf_counter() - started
    cpu = cpu_used(cpu_before, tree_cpu_seconds(processes))
    return Measured(
        seconds=seconds,
        run=service.run(run["runId"]),
        cpu=cpu,
        timeline=job_timeline(service.stack.env, run["runId"]),
    )


def job_timeline(env: dict[str, str], run_id: str) -> list[dict[str, Any]]:
    """The run's jobs from the job table: type, the worker process that ran it, and when it
    started and finished, in seconds from the run's creation."""
    script = (
        "import json\n"
        "from transcription.models import TranscriptRun\n"
        f"run = TranscriptRun.objects.get(pk={run_id!r})\n"
        "def at(t): return None if t is None else round((t - run.created_at).total_seconds(), 2)\n"
        "print(json.dumps([{'type': j.job_type, 'worker': j.locked_by or j.picked_by,"
        " 'queued': at(j.created_at), 'started': at(j.started_at), 'finished': at(j.finished_at)}"
        " for j in run.jobs.order_by('created_at', 'started_at')]))"
    )
    return list(json.loads(manage(env, "shell", "-v0", "-c", script)))


def machine_ceiling(env: dict[str, str], minutes: float) -> dict[str, float]:
    """What two one-thread processes give on this machine without the service: faster-whisper
    alone (bench/raw.py, batched as a worker's job) on a piece's worth of speech, in one
    process, then in two processes at once. `ratio` is the best two clusters can do against
    one on the chunks' part of the work: the time of two pieces side by side against two
    pieces one after the other."""
    piece = speech_file(repeats_for(minutes)).path
    alone = whisper_alone(piece, 2, env).seconds[-1]  # the first pass warms the caches
    with ThreadPoolExecutor(2) as pool:
        pair = list(pool.map(lambda _: whisper_alone(piece, 2, env), range(2)))
    side_by_side = max(raw.seconds[-1] for raw in pair)
    return {
        "piece_minutes": minutes,
        "one_process_s": round(alone, 2),
        "two_processes_s": round(side_by_side, 2),
        "ratio": round(side_by_side / (2 * alone), 3),
    }


# Rounds of (one cluster, two clusters): the machine is shared, and its pace drifts by more
# than the target's margin between one minute and the next (two faster-whisper processes
# side by side took 0.94-1.33x as long as one alone, run after run). The second round measures
# two clusters first, so that a drift weighs on both sides alike.
ROUNDS = 2


def steer(env: dict[str, str], cluster: Proc, state: str) -> None:
    """Pause or resume a worker cluster, as an operator does (its row's state: a paused
    cluster finishes what it runs and picks nothing new; the pick reads it each time)."""
    verb = {"paused": "pause", "running": "resume"}[state]
    script = (
        "from tasks_admin.models import Worker\n"
        f"Worker.objects.filter(pid={cluster.pid}).{verb}()\n"
        f"print(Worker.objects.filter(pid={cluster.pid}, state={state!r}).count())"
    )
    if manage(env, "shell", "-v0", "-c", script) != "1":
        raise RuntimeError(f"cluster {cluster.name} (pid {cluster.pid}) is not {state}")


def warm(service: Service, env: dict[str, str], clusters: list[Proc]) -> None:
    """Each cluster's model loaded, by a short job of its own (the others paused): clusters
    that run for real keep theirs loaded between jobs, and a first load (3-4 s here) is no
    part of what sharing a run costs or saves."""
    for cluster in clusters:
        for other in clusters:
            steer(env, other, "running" if other is cluster else "paused")
        run = service.submit(JFK)
        service.follow_until_done(run, timeout=300)
    for cluster in clusters:
        steer(env, cluster, "running")


def one_and_two(
    service: Service, audio: Path, env: dict[str, str], second: Proc, *, two_first: bool
) -> tuple[Measured, Measured]:
    """The file through `service`'s cluster alone (`second` paused), and through both, in
    that order or the other."""

    def two_clusters() -> Measured:
        return upload_to_done(service, audio, [service.web, service.worker, second])

    def one_cluster() -> Measured:
        steer(env, second, "paused")
        try:
            return upload_to_done(service, audio, [service.web, service.worker])
        finally:
            steer(env, second, "running")

    if two_first:
        two = two_clusters()
        return one_cluster(), two
    one = one_cluster()
    return one, two_clusters()


def measure(*, quick: bool = False) -> dict[str, Any]:
    minutes = 5 if quick else 20
    audio = speech_file(repeats_for(minutes))
    longer_than, seconds = QUICK_CHUNKS if quick else CHUNKS
    rounds: list[tuple[Measured, Measured]] = []
    with fresh_stack(
        "chunked", CHUNK_LONGER_THAN_SECONDS=longer_than, CHUNK_SECONDS=seconds
    ) as stack:
        env = {**stack.env, **ONE_THREAD_CLUSTER}
        with Service.start(stack, "one", **ONE_THREAD_CLUSTER) as service:
            second = start_worker(env, stack.logs, "worker-two")
            try:
                warm(service, env, [service.worker, second])
                for number in range(1 if quick else ROUNDS):
                    log(f"chunked: {audio.minutes:.1f} min, split, round {number + 1}")
                    one, two = one_and_two(
                        service, audio.path, env, second, two_first=number % 2 == 1
                    )
                    log(f"chunked: one cluster {one.seconds:.1f} s, two {two.seconds:.1f} s")
                    rounds.append((one, two))
            finally:
                stop_process(second, 90)
            log("chunked: unsplit, one cluster")
            # The split is decided at upload: a web process that never splits, same cluster.
            web, base = start_web({**env, "CHUNK_LONGER_THAN_SECONDS": "0"}, stack.logs, "web-0")
            unsplit_service = Service(stack=stack, web=web, worker=service.worker, base=base)
            try:
                whole = upload_to_done(unsplit_service, audio.path, [web, service.worker])
            finally:
                unsplit_service.client.close()
                stop_process(web, 15)
            log(f"chunked: unsplit, one cluster {whole.seconds:.1f} s; faster-whisper alone")
        ceiling = machine_ceiling(env, int(seconds) / 60)
    one_total = sum(one.seconds for one, _ in rounds)
    two_total = sum(two.seconds for _, two in rounds)
    one, two = rounds[-1]
    reference = " ".join([JFK_REFERENCE] * audio.repeats)
    split_wer = word_error_rate(reference, two.run["text"])
    unsplit_wer = word_error_rate(reference, whole.run["text"])
    return {
        "audio_minutes": round(audio.minutes, 2),
        "chunk_longer_than_seconds": int(longer_than),
        "chunk_seconds": int(seconds),
        "pieces": sum(job["jobType"] == "transcribe_chunk" for job in two.run["jobs"]),
        # The means over the rounds, and the ratio of their sums.
        "one_cluster_s": round(one_total / len(rounds), 2),
        "two_clusters_s": round(two_total / len(rounds), 2),
        "ratio": round(two_total / one_total, 3),
        "rounds": [
            {
                "one_cluster_s": round(one.seconds, 2),
                "two_clusters_s": round(two.seconds, 2),
                "ratio": round(two.seconds / one.seconds, 3),
            }
            for one, two in rounds
        ],
        "unsplit_one_cluster_s": round(whole.seconds, 2),
        "split_wer": round(split_wer, 4),
        "split_wer_one_cluster": round(word_error_rate(reference, one.run["text"]), 4),
        "unsplit_wer": round(unsplit_wer, 4),
        "wer_gap_points": round(100 * (split_wer - unsplit_wer), 2),
        "machine_ceiling": ceiling,
        # The last round's.
        "jobs": {"one_cluster": one.timeline, "two_clusters": two.timeline},
        "cpu_seconds": {"one_cluster": one.cpu, "two_clusters": two.cpu, "unsplit": whole.cpu},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    print(json.dumps(measure(quick=args.quick), indent=2))


if __name__ == "__main__":
    main()
