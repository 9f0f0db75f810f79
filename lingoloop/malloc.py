"""Fewer glibc malloc arenas in the web process.

glibc gives each thread that allocates an arena of its own, up to eight per core, and memory
freed in one arena is never reused by another. A web process has many short-lived allocating
threads (daphne's, Django's sync-to-async executor, the event hub's database threads, the sync
transcription pool), so its RSS grew with every thread that had handled an upload. Measured on
2 cores (bench/memory.py, 100 uploads then one sync transcription): 162 MiB before it first
transcribed and 317 MiB after with glibc's default, 150 and 282 MiB with two arenas, and no
change in transcription speed. A lower fixed mmap threshold saved more (142 / 250 MiB) but made
a sync transcription ~25 % slower (CTranslate2's buffers were mapped and unmapped at every step),
so it is left alone.

What a sync transcription frees (CTranslate2's and PyAV's buffers, the decoded audio) stays in
the heap as free memory glibc does not hand back on its own; `release_free_memory` returns it
after each one: 46 MiB of a 275 MiB process here, in 5 ms. An upload leaves the same behind
(its body is held whole by daphne, then spooled by Django): `ReleaseAfterLargeBodies` trims
after each request whose body was 1 MiB or more.
"""

from __future__ import annotations

import asyncio
import ctypes
import os
from typing import Any

# From glibc's malloc.h.
M_ARENA_MAX = -8
WEB_ARENAS = 2


def limit_arenas(arenas: int = WEB_ARENAS) -> bool:
    """Cap this process's malloc arenas at `arenas`, unless MALLOC_ARENA_MAX already says
    (glibc reads it at start, and an operator's choice wins). Call it before threads start.
    False where the C library has no such option (not glibc)."""
    if "MALLOC_ARENA_MAX" in os.environ:
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    return bool(mallopt(M_ARENA_MAX, arenas))


def release_free_memory() -> bool:
    """Give the heap's free pages back to the system (glibc's malloc_trim). False where the C
    library has no such call (not glibc)."""
    try:
        malloc_trim = ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):
        return False
    malloc_trim.argtypes = [ctypes.c_size_t]
    return bool(malloc_trim(0))


class ReleaseAfterLargeBodies:
    """ASGI middleware: `release_free_memory` (in a thread: it takes milliseconds) once a
    request whose body had `threshold` bytes or more is answered."""

    def __init__(self, app: Any, threshold: int = 1 << 20) -> None:
        self.app = app
        self.threshold = threshold

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        received = 0

        async def counting_receive() -> dict[str, Any]:
            nonlocal received
            message: dict[str, Any] = await receive()
            received += len(message.get("body", b""))
            return message

        try:
            await self.app(scope, counting_receive, send)
        finally:
            if received >= self.threshold:
                await asyncio.to_thread(release_free_memory)
