"""The upload page, the runs page and what every page shares (the top bar, the no-worker
banner), in Chromium on real web and worker processes (tests/browser.py).

Runs that a test needs finished are seeded before the browser starts (no ORM once it runs).
"""

from __future__ import annotations

import itertools
import shutil
import uuid
from datetime import timedelta
from typing import Any

import pytest
from django.utils import timezone

from tests.browser import (
    requires_chromium,
    upload_item,
)
from tests.conftest import JFK
from transcription.models import Audio, RunMode, RunStatus, TranscriptRun

pytestmark = [requires_chromium, pytest.mark.slow]


def seed(
    service: Any,
    *,
    filename: str = "jfk.flac",
    status: str = RunStatus.SUCCEEDED,
    text: str = "And so my fellow Americans, ask not what your country can do for you.",
) -> str:
    """A finished run as a worker leaves it, 11 s of audio transcribed in 2 s."""
    uploads = service.processes.data_dir / "uploads"
    uploads.mkdir(exist_ok=True)
    stored_name = uuid.uuid4().hex
    shutil.copy(JFK, uploads / stored_name)
    audio = Audio.objects.create(
        owner=service.account.user,
        stored_name=stored_name,
        original_filename=filename,
        content_type="audio/flac",
        size_bytes=JFK.stat().st_size,
        duration_ms=11000,
        sha256=uuid.uuid4().hex * 2,
    )
    finished = timezone.now()
    succeeded = status == RunStatus.SUCCEEDED
    run = TranscriptRun.objects.create(
        owner=service.account.user,
        audio=audio,
        status=status,
        mode=RunMode.ASYNC,
        model="tiny.en",
        progress=100.0 if succeeded else 0.0,
        text=text if succeeded else "",
        segments=[{"id": 0, "start": 0.0, "end": 11.0, "text": text}] if succeeded else [],
        started_at=finished - timedelta(seconds=2),
        finished_at=finished,
        error_code="undecodable" if status == RunStatus.FAILED else "",
        error_message="The audio could not be decoded." if status == RunStatus.FAILED else "",
    )
    return str(run.pk)


# --- No worker, no promises -------------------------------------------------------------------


@pytest.fixture
def recent_run(service) -> str:  # type: ignore[no-untyped-def]
    """A run finished lately: the server knows a speed, so it could (wrongly) promise a time."""
    return seed(service)


def test_without_a_live_worker_every_page_says_so_and_promises_no_time(recent_run, ui):
    from playwright.sync_api import expect

    page = ui.page
    ui.login()
    banner = page.locator("#worker-banner")
    expect(banner).to_be_visible()
    expect(banner).to_contain_text("No worker is running")
    expect(banner).to_contain_text("Ask an administrator")

    page.set_input_files("#files", str(JFK))
    page.get_by_role("button", name="Transcribe").click()
    item = upload_item(ui, "jfk.flac")
    expect(item.locator(".badge")).to_have_text("Queued", timeout=30_000)
    expect(item.locator(".upload-detail")).to_contain_text("1st in line")
    expect(item.locator(".upload-detail")).to_contain_text("no worker is running")
    expect(item.locator(".upload-detail")).not_to_contain_text("done in")
    run_id = item.get_by_role("link").get_attribute("href").split("/")[2]
    # The server promises nothing either.
    assert ui.service.api("GET", f"/api/runs/{run_id}").json()["estimatedTimeRemaining"] is None
    ui.shot("no-worker")

    page.goto(ui.url("/runs/"))
    expect(page.locator("#worker-banner")).to_be_visible()
    row = page.locator(f'tr[data-run-id="{run_id}"]')
    expect(row.locator(".badge")).to_have_text("Queued")
    expect(row.locator(".run-detail")).not_to_contain_text("done in")
    ui.mark_page()

    ui.service.worker()

    # The next poll of /api/health (every 10 s) takes the banner away, without a reload.
    expect(page.locator("#worker-banner")).to_be_hidden(timeout=30_000)
    expect(row.locator(".badge")).to_have_text("Done", timeout=120_000)
    ui.assert_not_reloaded()
    ui.assert_no_console_errors()


# --- The upload page: the bar only fills, the preview is three clean lines --------------------

# Every animation frame, the rendered width of what the item's bar shows filled (both lanes).
SAMPLE_BAR = """name => {
    window.__widths = [];
    const sample = () => {
        const item = [...document.querySelectorAll("li.upload")]
            .find(li => li.querySelector(".upload-name").textContent === name);
        const bar = item && item.querySelector(".bar");
        if (bar && !bar.hidden) {
            const fills = [...bar.querySelectorAll(".bar-fill")];
            const width = f => f.getBoundingClientRect().width;
            window.__widths.push(fills.reduce((sum, f) => sum + width(f), 0));
        }
        if (!window.__stopSampling) requestAnimationFrame(sample);
    };
    requestAnimationFrame(sample);
}"""


def test_the_upload_bar_never_runs_backwards_and_the_preview_shows_three_whole_lines(ui, tmp_path):
    from playwright.sync_api import expect

    from tests.conftest import long_speech

    page = ui.page
    speech = long_speech(tmp_path / "talk.wav", repeats=3)  # ~36 s: several lines of text
    ui.login()
    page.set_input_files("#files", str(speech))
    page.evaluate(SAMPLE_BAR, "talk.wav")
    page.get_by_role("button", name="Transcribe").click()
    item = upload_item(ui, "talk.wav")
    # Uploaded and queued: the upload lane stays full while the run waits.
    expect(item.locator(".badge")).to_have_text("Queued", timeout=30_000)
    page.wait_for_timeout(600)  # what a transition from 100 % down to 0 would have taken
    ui.service.worker()
    expect(item.locator(".badge")).to_have_text("Done", timeout=120_000)
    page.wait_for_timeout(600)  # the last transition ends
    page.evaluate("() => { window.__stopSampling = true; }")
    widths = page.evaluate("() => window.__widths")
    assert len(widths) > 10, widths
    drops = [(i, a, b) for i, (a, b) in enumerate(itertools.pairwise(widths)) if b < a - 0.5]
    assert not drops, f"the bar ran backwards: {drops[:5]} of {len(widths)} samples"
    # Done: the bar is full, its every lane filled.
    full = page.evaluate(
        """() => [...document.querySelectorAll("li.upload .bar-lane")].map(lane =>
            [lane, lane.firstElementChild].map(e => e.getBoundingClientRect().width))"""
    )
    assert full and all(abs(lane - fill) < 1 for lane, fill in full), full

    # The preview: three whole lines, and nothing of the fourth under the ellipsis.
    page.set_viewport_size({"width": 390, "height": 800})
    preview = item.locator(".upload-text")
    expect(preview).to_be_visible()
    box = preview.evaluate(
        """p => {
            const style = getComputedStyle(p);
            const range = document.createRange();
            range.selectNodeContents(p);
            const tops = [...new Set([...range.getClientRects()].map(r => Math.round(r.top)))];
            const rect = p.getBoundingClientRect();
            return {
                lineHeight: parseFloat(style.lineHeight),
                inner: p.clientHeight - parseFloat(style.paddingTop)
                    - parseFloat(style.paddingBottom),
                clipBottom: rect.top + p.clientTop + p.clientHeight,
                lines: tops.sort((a, b) => a - b),
            };
        }"""
    )
    assert len(box["lines"]) > 3, box  # long enough to be cut
    assert abs(box["inner"] - 3 * box["lineHeight"]) <= 2, box
    assert box["lines"][3] >= box["clipBottom"] - 1, f"part of a 4th line shows: {box}"
    ui.shot("preview-narrow")
    ui.assert_no_console_errors()
