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
"""

from __future__ import annotations

import ctypes
import os

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
