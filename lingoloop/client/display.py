"""What a person sees while files upload and runs progress.

On a terminal (stdout is a TTY): one rich progress bar a file, with its phase, place in the
queue or ETA, and the transcript printed above the bars as it grows. In a pipe: no bars, a plain
line on stderr when a run's status changes, so stdout holds only what was asked for.
"""

from __future__ import annotations

import sys
import threading
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, Progress, TaskID, TextColumn

from lingoloop.client.follow import RunState


def ordinal(n: int) -> str:
    suffix = "th" if 10 <= n % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")
    return f"{n}{suffix}"


def clock(seconds: float) -> str:
    seconds = max(0, round(seconds))
    minutes, seconds = divmod(seconds, 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02}:{seconds:02}" if hours else f"{minutes}:{seconds:02}"


def describe(state: RunState) -> str:
    """`queued · 2nd in line`, `processing · 45 % · about 0:12 left`, `succeeded`…"""
    if state.status == "queued":
        if state.queue_position:
            return f"queued · {ordinal(state.queue_position)} in line"
        return "queued"
    if state.status == "processing":
        parts = ["processing", f"{state.progress:.0f} %"]
        if state.eta is not None:
            parts.append(f"about {clock(state.eta)} left")
        return " · ".join(parts)
    if state.status == "failed" and state.error:
        return f"failed: {state.error}"
    return state.status


class Display:
    """One line (a bar on a terminal) per file, safe to update from several threads."""

    def __init__(self, *, interactive: bool, show_text: bool) -> None:
        self.interactive = interactive
        self.show_text = show_text
        self.console = Console(file=sys.stdout if interactive else sys.stderr, highlight=False)
        self.err = Console(file=sys.stderr, highlight=False)
        self._lock = threading.Lock()
        self._tasks: dict[str, TaskID] = {}
        self._said: dict[str, str] = {}
        self.progress = Progress(
            TextColumn("{task.fields[name]}", style="bold"),
            BarColumn(complete_style="cyan", finished_style="green"),
            TextColumn("{task.fields[detail]}"),
            console=self.console,
            disable=not interactive,
            transient=False,
        )

    def __enter__(self) -> Display:
        self.progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.progress.stop()

    def upload_started(self, key: str, name: str, total: int) -> None:
        with self._lock:
            self._tasks[key] = self.progress.add_task(
                "", total=total or 1, name=escape(name), detail="uploading"
            )

    def uploaded(self, key: str, done: int, total: int) -> None:
        percent = 100 * done / total if total else 100
        self.progress.update(
            self._tasks[key], completed=done, detail=f"uploading · {percent:.0f} %"
        )

    def upload_finished(self, key: str) -> None:
        """The upload's bar is done with (full, or the upload failed): the transcription gets
        a bar of its own, so no bar ever runs backwards."""
        with self._lock:
            task = self._tasks.pop(key, None)
        if task is not None:
            self.progress.remove_task(task)

    def run_started(self, key: str, name: str, state: RunState) -> None:
        with self._lock:
            self._tasks[key] = self.progress.add_task(
                "", total=100, name=escape(name), detail=escape(describe(state))
            )

    def run_changed(
        self, key: str, name: str, state: RunState, fresh: list[dict[str, Any]]
    ) -> None:
        """A run's state moved on: its bar (total 100: the transcription phase, which starts
        empty and only fills), and its new segments above the bars."""
        detail = describe(state) + ("" if state.live else " (polling)")
        task = self._tasks.get(key)
        if task is not None:
            done = 100.0 if state.status == "succeeded" else state.progress
            self.progress.update(task, total=100, completed=done, detail=escape(detail))
        if self.show_text:
            for segment in fresh:
                prefix = f"[dim]{escape(name)} {clock(float(segment.get('start', 0)))}[/dim] "
                self.say(prefix + escape(str(segment.get("text", "")).strip()))
        # In a pipe, a line a change of status; the end is said by the command's summary.
        if not self.interactive and not state.finished and self._said.get(key) != state.status:
            self._said[key] = state.status
            self.err.print(f"{name}: {describe(state)}", markup=False)

    def say(self, text: str) -> None:
        """A line above the bars (or on stderr in a pipe)."""
        (self.progress.console if self.interactive else self.err).print(text)

    def note(self, text: str) -> None:
        """A plain message for the person (stderr), never markup."""
        if self.interactive:
            self.progress.console.print(text, markup=False)
        else:
            self.err.print(text, markup=False)
