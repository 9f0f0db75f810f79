"""A full disk, on a real web process and a real worker (issue 18).

The disk is a small tmpfs this test mounts, which needs root; without it the tests that need
one are skipped, saying so. What must hold: an upload the disk cannot hold is answered 507 in
the API's error shape and leaves nothing of itself on the disk (so the next upload, once
there is room, succeeds without a restart); an upload is refused before its body is read when
free space is below MIN_FREE_DISK_BYTES; a worker whose disk is low picks nothing, says so in
its row, and picks again once there is room; health and /metrics tell.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from lingoloop import disk
from tasks_admin.models import Worker
from tests.conftest import Service, long_speech, never_happens, wait_until
from transcription.models import Audio, TranscriptRun

pytestmark = pytest.mark.slow

MiB = 1024 * 1024


def _mount_refusal() -> str | None:
    if os.geteuid() != 0:
        return "mounting a small tmpfs for the full disk needs root"
    if shutil.which("mount") is None:
        return "no mount command"
    return None


@contextlib.contextmanager
def small_disk(folder: Path, size: str) -> Iterator[Path]:
    """A tmpfs of `size` at `folder`: a disk that fills up for real (ENOSPC)."""
    refusal = _mount_refusal()
    if refusal:
        pytest.skip(refusal)
    folder.mkdir(parents=True, exist_ok=True)
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)],
        capture_output=True,
        text=True,
    )
    if mounted.returncode != 0:
        pytest.skip(f"could not mount a tmpfs here: {mounted.stderr.strip()}")
    try:
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=False)


def _multipart(audio: Path) -> tuple[bytes, str]:
    boundary = uuid.uuid4().hex
    body = (
        (
            f'--{boundary}\r\nContent-Disposition: form-data; name="mode"\r\n\r\nasync\r\n'
            f'--{boundary}\r\nContent-Disposition: form-data; name="file"; '
            f'filename="{audio.name}"\r\nContent-Type: audio/wav\r\n\r\n'
        ).encode()
        + audio.read_bytes()
        + f"\r\n--{boundary}--\r\n".encode()
    )
    return body, f"multipart/form-data; boundary={boundary}"


def _read_answer(sock: socket.socket) -> tuple[int, dict[str, object]]:
    answer = b""
    while b"\r\n\r\n" not in answer:
        chunk = sock.recv(65536)
        assert chunk, f"the connection closed without an answer: {answer!r}"
        answer += chunk
    head, _, body = answer.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    length = next(
        int(line.split(":", 1)[1]) for line in lines if line.lower().startswith("content-length")
    )
    while len(body) < length:
        chunk = sock.recv(65536)
        if not chunk:
            break
        body += chunk
    return int(lines[0].split()[1]), json.loads(body)


def upload_filling_the_disk_midway(service: Service, audio: Path, fill: Callable[[], object]):  # type: ignore[no-untyped-def]
    """An upload (its length announced: there is room for it when it starts) during which the
    disk fills up: half of the body is sent, `fill` runs, and the rest follows a piece at a
    time until the server answers. (status, JSON body)."""
    body, content_type = _multipart(audio)
    host, port = service.web_url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=30) as sock:
        sock.sendall(
            (
                f"POST /api/transcribe HTTP/1.1\r\nHost: {host}\r\n"
                f"Authorization: Bearer {service.account.token}\r\n"
                f"Content-Type: {content_type}\r\nContent-Length: {len(body)}\r\n\r\n"
            ).encode()
        )
        half = len(body) // 2
        sock.sendall(body[:half])
        time.sleep(0.2)  # let the server write what it has before the disk fills
        fill()
        sock.settimeout(0.2)
        for start in range(half, len(body), 64 * 1024):
            try:
                sock.sendall(body[start : start + 64 * 1024])
                sock.recv(1, socket.MSG_PEEK)  # an answer already?
                break
            except TimeoutError:
                continue  # none yet: go on sending
            except OSError:
                break  # refused and closed while we sent: the answer is in the buffer
        sock.settimeout(30)
        return _read_answer(sock)


def files_under(folder: Path) -> list[Path]:
    return sorted(path for path in folder.rglob("*") if path.is_file())


def fill(folder: Path, leave: int) -> Path:
    """A file that takes all but `leave` bytes of the disk under `folder`."""
    filler = folder / "filler"
    free = disk.free_bytes(folder) or 0
    with filler.open("wb") as out:
        out.write(b"\0" * max(0, free - leave))
    return filler


@pytest.mark.parametrize("spooled_on_the_small_disk", [True, False], ids=["daphne", "django"])
def test_an_upload_the_disk_cannot_hold_is_507_and_leaves_nothing_behind(
    service: Service, tmp_path: Path, spooled_on_the_small_disk: bool
) -> None:
    """As the operator's bad day went: the data folder on a small disk, then uploads of a file
    that no longer fits. With the system's temporary folder on that disk too, daphne's own
    spool of the body is what fails; without, Django's upload handler's file in DATA_DIR/tmp.
    The disk fills while the upload streams, so the check before it is read lets it in."""
    with small_disk(tmp_path / "small", "4m") as data_dir:
        system_tmp = data_dir / "systemtmp" if spooled_on_the_small_disk else tmp_path / "big"
        system_tmp.mkdir()
        service.start_web(DATA_DIR=str(data_dir), TMPDIR=str(system_tmp), MIN_FREE_DISK_BYTES="0")
        audio = long_speech(tmp_path / "talk.wav", 3)  # about 1.1 MB
        assert service.post(audio, mode="async").status_code == 202
        empty = disk.free_bytes(data_dir) or 0
        fillers: list[Path] = []

        for _ in range(2):
            answer, error = upload_filling_the_disk_midway(
                service, audio, lambda: fillers.append(fill(data_dir, leave=64 * 1024))
            )
            assert answer == 507, error
            assert error["error"]["code"] == "insufficient_storage"  # type: ignore[index]
            assert "nothing was kept" in error["error"]["message"]  # type: ignore[index]
            fillers.pop().unlink()
            # Nothing of the refused upload stayed, on the disk or in the database: all the
            # room it took is free again at once.
            wait_until(
                lambda: (disk.free_bytes(data_dir) or 0) >= empty, 5, "the upload's room back"
            )
            assert files_under(data_dir / "tmp") == []
            assert files_under(system_tmp) == []
            assert len(files_under(data_dir / "uploads")) == 1
            assert TranscriptRun.objects.count() == Audio.objects.count() == 1

        # The same web process keeps the next upload.
        again = service.post(audio, mode="async")
        assert again.status_code == 202, again.text
        assert TranscriptRun.objects.count() == 2
        service.processes.stop_all()  # before the disk goes


def _raw_upload_head(base: str, length: int, token: str) -> bytes:
    """Send only the head of an upload of `length` bytes and return what the server answers
    before any of the body is sent."""
    host, port = base.removeprefix("http://").split(":")
    boundary = uuid.uuid4().hex
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(
            (
                "POST /api/transcribe HTTP/1.1\r\n"
                f"Host: {host}\r\n"
                f"Authorization: Bearer {token}\r\n"
                f"Content-Type: multipart/form-data; boundary={boundary}\r\n"
                f"Content-Length: {length}\r\n\r\n"
            ).encode()
        )
        answer = b""
        while b"\r\n\r\n" not in answer or not answer.rstrip().endswith(b"}"):
            chunk = sock.recv(65536)
            if not chunk:
                break
            answer += chunk
        return answer


def test_below_min_free_disk_bytes_an_upload_is_refused_before_its_body_is_read(
    service: Service,
) -> None:
    """No tmpfs needed: a threshold above any disk's free space."""
    base = service.start_web(MIN_FREE_DISK_BYTES=str(2**62))

    answer = _raw_upload_head(base, 200 * MiB, service.account.token)
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 507 Insufficient Storage"), answer[:300]
    assert b"insufficient_storage" in body
    assert b"Retry-After:" in head

    # A small request (no body to spool) is served as ever.
    assert service.api("GET", "/api/runs").status_code == 200
    health = httpx.get(f"{base}/api/health", timeout=10).json()
    assert health["status"] == "degraded"
    assert {folder["folder"] for folder in health["disk"] if folder["low"]} == {
        "data",
        "uploadTemp",
        "systemTemp",
    }
    assert any("MIN_FREE_DISK_BYTES" in problem for problem in health["problems"])
    assert "/" not in " ".join(health["problems"])  # no path for an anonymous reader


def test_a_worker_whose_disk_is_low_picks_nothing_says_so_and_picks_again_once_there_is_room(
    service: Service, tmp_path: Path
) -> None:
    with small_disk(tmp_path / "small", "8m") as data_dir:
        # The web process takes the upload whatever the room (MIN_FREE_DISK_BYTES=0); the
        # worker, on the same disk, wants 4 MiB free.
        base = service.start_web(DATA_DIR=str(data_dir), MIN_FREE_DISK_BYTES="0")
        worker = service.worker(data_dir=data_dir, MIN_FREE_DISK_BYTES=str(4 * MiB))
        filler = fill(data_dir, leave=3 * MiB)

        def low_disk() -> list[dict[str, object]]:
            return list(Worker.objects.exclude(low_disk="").values("id", "low_disk"))

        wait_until(low_disk, 10, "the worker's beat to see its disk low")
        [row] = low_disk()
        assert "MIN_FREE_DISK_BYTES" in str(row["low_disk"])
        health = httpx.get(f"{base}/api/health", timeout=10).json()
        assert health["status"] == "degraded"
        assert any(f"worker {row['id']} picks no jobs" in p for p in health["problems"])

        run = service.submit()
        never_happens(
            lambda: TranscriptRun.objects.get(pk=run["runId"]).status != "queued",
            3,
            "a job picked by a worker with no room",
        )
        filler.unlink()
        finished = service.wait_for_status(run["runId"], "succeeded", timeout=60)
        assert finished.text
        assert worker.poll() is None  # the same worker, never restarted
        assert Worker.objects.get().low_disk == ""
        service.processes.stop_all()  # before the disk goes


def test_metrics_show_free_space_of_each_folder_and_the_threshold(service: Service) -> None:
    base = service.start_web(METRICS_ALLOWED_IPS="127.0.0.1", MIN_FREE_DISK_BYTES="12345")
    text = httpx.get(f"{base}/metrics", timeout=10).text
    for folder in ("data", "uploadTemp", "systemTemp"):
        assert f'lingoloop_disk_free_bytes{{folder="{folder}"}}' in text
    assert "lingoloop_disk_min_free_bytes 12345.0" in text
