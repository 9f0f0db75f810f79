"""The benchmark entry point (`python -m bench`): its command line, registry and table.

No benchmark runs here (they take minutes and their timings are noisy); these check that the
entry point starts, that every registered benchmark names a function that exists, and that
figures become the right rows and verdicts.
"""

from __future__ import annotations

import importlib
import subprocess
import sys

import pytest

from bench.__main__ import BY_NAME, REGISTRY, Entry, Outcome, Row, chosen, parser, run, table
from tests.conftest import ROOT


def bench(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "bench", *args], cwd=ROOT, capture_output=True, text=True
    )


def test_help_lists_every_benchmark() -> None:
    answer = bench("--help")
    assert answer.returncode == 0, answer.stderr
    for entry in REGISTRY:
        assert f"  {entry.name} " in answer.stdout


def test_an_unknown_name_is_refused_before_anything_runs() -> None:
    answer = bench("nosuch")
    assert answer.returncode == 2
    assert "unknown benchmark(s): nosuch" in answer.stderr


@pytest.mark.parametrize("name", ["async_path", "throughput", "memory", "peaks", "soak"])
def test_the_scripts_moved_onto_the_harness_are_registered(name: str) -> None:
    entry = BY_NAME[name]
    assert entry.missing is None
    assert callable(getattr(importlib.import_module(f"bench.{entry.module}"), entry.function))


def test_a_benchmark_without_its_function_is_listed_as_missing_not_run() -> None:
    entry = Entry("later", "async_path", "not_written_yet", lambda found: [], "a later figure")
    assert entry.missing == "bench/async_path.py has no not_written_yet(*, quick) yet"
    assert "| later: not measured (bench/async_path.py has no" in table([run(entry, quick=True)])


def test_all_runs_the_issue_figures_but_not_the_soak_or_the_long_peaks() -> None:
    names = {entry.name for entry in chosen(["all"], parser())}
    assert {"async_path", "throughput", "memory", "pickup", "sse_fanout"} <= names
    assert not names & {"soak", "peaks"}


def throughput(service_s: float) -> dict[str, object]:
    return {"files": 100, "service_s": service_s, "whisper_alone_s": 60.0}


def test_a_ratio_over_its_target_is_marked_missed() -> None:
    entry = BY_NAME["throughput"]
    (met,) = entry.render(throughput(66.0))
    (missed,) = entry.render(throughput(72.0))
    assert met.ratio == pytest.approx(1.1) and met.met is True
    assert missed.ratio == pytest.approx(1.2) and missed.met is False
    assert "| 1.2 x | ≤ 1.15x | **no** |" in table([Outcome(entry, figures=throughput(72.0))])


def test_memory_targets_bound_the_service_not_a_ratio() -> None:
    figures = {
        "whisper_alone_rss_mib": 250.0,
        "web_rss_mib": {"before_transcribing": 140.0, "after_transcribing": 320.0},
        "worker_jobs": [10, 100],
        "worker_rss_mib": [400.0, 420.0],
        "worker_growth_percent": 5.0,
    }
    rows = {row.figure: row for row in BY_NAME["memory"].render(figures)}
    assert rows["web RSS before it first transcribes"].met is True
    assert rows["web RSS after a sync transcription"].met is False
    assert rows["worker RSS growth, 10 -> 100 jobs"].met is True


def test_figures_an_adapter_does_not_know_are_still_shown() -> None:
    changed = {"median_ms": 42.0, "p99_ms": {"sqlite": 120.0}, "ok": True}
    rows = Outcome(BY_NAME["throughput"], figures=changed).rows()
    assert [(r.figure, r.service) for r in rows] == [("median_ms", 42.0), ("p99_ms.sqlite", 120.0)]


def test_a_benchmark_whose_module_is_not_written_says_so_in_the_table() -> None:
    entry = Entry("later", "not_written_yet", "measure", lambda found: [], "a later figure")
    expected = "| later: not measured (bench/not_written_yet.py is not there yet) |"
    assert expected in table([run(entry, quick=True)])


def test_a_row_without_raw_figure_has_no_ratio() -> None:
    row = Row("web RSS", 140.0, None, "MiB", 150, "service")
    assert row.ratio is None and row.met is True and row.target == "≤ 150 MiB"
