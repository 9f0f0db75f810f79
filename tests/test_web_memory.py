"""The web process stays small until it transcribes: no engine loaded to check a language
code, and few malloc arenas however many threads have handled requests (the figures are
bench/memory.py's; these tests hold the causes, not the numbers)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from faster_whisper.tokenizer import _LANGUAGE_CODES

from tests.conftest import ROOT
from transcription.languages import LANGUAGE_CODES


def test_language_codes_are_the_ones_faster_whisper_knows() -> None:
    assert set(_LANGUAGE_CODES) == LANGUAGE_CODES


def loaded_at_start(packages: set[str], **env: str) -> list[str]:
    """The modules of `packages` a web process has loaded once it is ready to serve."""
    probe = (
        "import json, sys, django; django.setup();"
        "from django.urls import get_resolver; get_resolver().url_patterns;"
        "import lingoloop.asgi;"
        f"print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in {packages!r})))"
    )
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "lingoloop.settings", **env}
    out = subprocess.run(
        [sys.executable, "-c", probe], cwd=ROOT, env=env, capture_output=True, text=True, check=True
    )
    return list(json.loads(out.stdout.strip().splitlines()[-1]))


def test_a_web_process_loads_no_engine_until_it_transcribes() -> None:
    """The engine's libraries (~30 MiB) are loaded on the first transcription, not at start:
    a web process that only queues work never needs them."""
    assert loaded_at_start({"faster_whisper", "ctranslate2", "tokenizers", "onnxruntime"}) == []


def test_a_web_process_on_sqlite_loads_no_postgresql_driver_and_no_http_client(tmp_path) -> None:
    """DRF would import psycopg through django.contrib.postgres (9 MiB); webhooks import
    httpx on their first attempt, in a worker (3 MiB)."""
    sqlite = f"sqlite:///{tmp_path / 'db.sqlite3'}"
    assert loaded_at_start({"psycopg", "httpx"}, DATABASE_URL=sqlite) == []


ARENAS_AFTER_THREADS = """
import ctypes, sys, tempfile, threading
from lingoloop.malloc import limit_arenas
if sys.argv[1] == "limited":
    assert limit_arenas()
alive = threading.Barrier(8)
def allocate():
    keep = [bytearray(4096) for _ in range(200)]
    alive.wait()  # all eight at once: a finished thread's arena would go to the next
threads = [threading.Thread(target=allocate) for _ in range(8)]
for thread in threads: thread.start()
for thread in threads: thread.join()
libc = ctypes.CDLL(None)
libc.fopen.restype = ctypes.c_void_p
libc.malloc_info.argtypes = [ctypes.c_int, ctypes.c_void_p]
libc.fclose.argtypes = [ctypes.c_void_p]
with tempfile.NamedTemporaryFile() as report:
    stream = libc.fopen(report.name.encode(), b"w")
    libc.malloc_info(0, stream)
    libc.fclose(stream)
    print(open(report.name).read().count("<heap nr="))
"""


def malloc_heaps_after_eight_threads(mode: str) -> int:
    env = {k: v for k, v in os.environ.items() if k != "MALLOC_ARENA_MAX"}
    out = subprocess.run(
        [sys.executable, "-c", ARENAS_AFTER_THREADS, mode],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    return int(out.stdout.strip())


def test_threads_of_the_web_process_share_two_malloc_arenas() -> None:
    # The control shows that eight threads do get arenas of their own without the cap.
    assert malloc_heaps_after_eight_threads("default") > 2
    assert malloc_heaps_after_eight_threads("limited") <= 2


def test_an_operators_malloc_arena_max_is_left_alone(monkeypatch) -> None:
    from lingoloop.malloc import limit_arenas

    monkeypatch.setenv("MALLOC_ARENA_MAX", "4")
    assert limit_arenas() is False


FREED_HEAP = """
import sys
from lingoloop.malloc import release_free_memory

def rss_mib():
    with open("/proc/self/status") as status:
        line = next(line for line in status if line.startswith("VmRSS"))
    return int(line.split()[1]) / 1024

# 300 MiB in small blocks (below glibc's mmap threshold: they live in the heap), then all
# freed but every 64th: the heap's top stays in use, so glibc's own trimming cannot shrink it.
blocks = [bytes(2048) for _ in range(150_000)]
kept = blocks[::64]
del blocks
freed = rss_mib()
released = release_free_memory()
print(released, round(freed - rss_mib()))
"""


def test_free_heap_memory_is_handed_back_to_the_system() -> None:
    """What a transcription frees stays in a glibc heap unless it is trimmed: the reason the
    web process trims after each sync transcription (bench/memory.py has the figures)."""
    out = subprocess.run(
        [sys.executable, "-c", FREED_HEAP], cwd=ROOT, capture_output=True, text=True, check=True
    )
    released, returned_mib = out.stdout.split()
    assert released == "True"
    assert int(returned_mib) > 100


@pytest.mark.django_db(transaction=True)
def test_a_sync_transcription_hands_its_freed_memory_back(alice, jfk, monkeypatch) -> None:
    from tests.conftest import post_audio
    from transcription import services

    calls: list[str] = []
    monkeypatch.setattr(services, "release_free_memory", lambda: calls.append("trim") or True)

    response = post_audio(alice.client, jfk, mode="sync")

    assert response.status_code == 201, response.content
    assert response.json()["status"] == "succeeded"
    assert calls == ["trim"]


@pytest.mark.parametrize(("body", "trims"), [(b"x" * (1 << 20), 1), (b"x" * 1000, 0)])
def test_the_web_process_trims_after_a_request_with_a_large_body(monkeypatch, body, trims):
    """An upload's body is held whole by daphne and spooled by Django: what it leaves in the
    heap is handed back once it is answered (lingoloop.malloc)."""
    import asyncio

    from lingoloop import malloc

    calls: list[str] = []
    monkeypatch.setattr(malloc, "release_free_memory", lambda: calls.append("trim") or True)
    messages = [
        {"type": "http.request", "body": body[: len(body) // 2], "more_body": True},
        {"type": "http.request", "body": body[len(body) // 2 :], "more_body": False},
    ]

    async def receive():  # type: ignore[no-untyped-def]
        return messages.pop(0)

    async def send(message):  # type: ignore[no-untyped-def]
        pass

    async def app(scope, receive, send):  # type: ignore[no-untyped-def]
        while (await receive())["more_body"]:
            pass

    middleware = malloc.ReleaseAfterLargeBodies(app)
    asyncio.run(middleware({"type": "http"}, receive, send))
    assert calls == ["trim"] * trims
