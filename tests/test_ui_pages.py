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
    UI,
    assert_accessible,
    no_horizontal_scroll,
    requires_chromium,
    tab_to,
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


# --- The runs page: find, filter, retry, delete -------------------------------------------------


@pytest.fixture
def library(service) -> dict[str, str]:  # type: ignore[no-untyped-def]
    return {
        "speech": seed(service, filename="speech.flac"),
        "interview": seed(
            service, filename="interview.flac", text="The budget for next year is approved."
        ),
        "lecture": seed(service, filename="lecture.flac", status=RunStatus.FAILED),
        "notes": seed(service, filename="notes.flac", status=RunStatus.CANCELLED),
    }


def rows(ui: UI) -> list[str]:
    return list(ui.page.locator("tr[data-run-id] .cell-file a").all_text_contents())


def test_runs_page_filters_searches_retries_and_deletes_and_keeps_to_its_filter(library, ui):
    from playwright.sync_api import expect

    page = ui.page
    worker = ui.service.worker()  # for the README's picture: a service at work, no banner
    ui.login()
    ui.follow(page.get_by_role("link", name="Runs", exact=True), "/runs/")
    expect(page.locator("tr[data-run-id]")).to_have_count(4)
    expect(page.locator("#worker-banner")).to_be_hidden()
    page.get_by_role("checkbox", name="Select speech.flac").check()
    ui.shot("runs", docs="runs-page.png")
    assert_accessible(ui)
    page.get_by_role("checkbox", name="Select speech.flac").uncheck()
    ui.service.processes.stop(worker)  # what is queued from here on stays queued

    # Search the transcripts: a GET form, so the URL says what is shown.
    page.get_by_label("Search").fill("budget")
    page.get_by_label("Search").press("Enter")
    page.wait_for_url("**/runs/?q=budget&status=")
    assert rows(ui) == ["interview.flac"]
    page.get_by_role("link", name="Clear").click()
    page.get_by_label("Status").select_option("failed")
    ui.follow(page.get_by_role("button", name="Apply"), "/runs/?q=&status=failed")
    assert rows(ui) == ["lecture.flac"]
    ui.mark_page()

    # A new run does not match "failed": the live list leaves it out.
    new = ui.service.submit(JFK)
    page.wait_for_timeout(2000)
    assert ui.service.api("POST", f"/api/runs/{new['runId']}/cancel").status_code == 200
    page.wait_for_timeout(1500)
    assert rows(ui) == ["lecture.flac"]

    # Retry from its row (through the API, without a reload).
    page.get_by_role("button", name="Retry lecture.flac").click()
    lecture = page.locator(f'tr[data-run-id="{library["lecture"]}"]')
    expect(lecture.locator(".badge")).to_have_text("Queued")
    expect(page.get_by_role("button", name="Retry lecture.flac")).to_be_hidden()
    ui.assert_not_reloaded()
    assert ui.service.api("GET", f"/api/runs/{library['lecture']}").json()["status"] == "queued"

    # Delete one, after a confirmation: dismissed, nothing happens; accepted, it is gone.
    page.goto(ui.url("/runs/"))
    page.once("dialog", lambda dialog: dialog.dismiss())
    page.get_by_role("button", name="Delete notes.flac").click()
    page.wait_for_timeout(300)
    assert "notes.flac" in rows(ui)
    page.once("dialog", lambda dialog: dialog.accept())
    ui.follow(page.get_by_role("button", name="Delete notes.flac"), "/runs/")
    expect(page.get_by_text("Deleted 1 run: notes.flac.")).to_be_visible()
    assert "notes.flac" not in rows(ui)

    # Bulk delete: the queued one is skipped, and the page says why.
    for name in ("speech.flac", "interview.flac", "lecture.flac"):
        page.get_by_role("checkbox", name=f"Select {name}").check()
    messages: list[str] = []

    def accept(dialog: Any) -> None:
        messages.append(dialog.message)
        dialog.accept()

    page.once("dialog", accept)
    ui.follow(page.get_by_role("button", name="Delete selected"), "/runs/")
    assert messages == [
        "Delete these 3 runs? Their transcripts are deleted and cannot be recovered."
    ]
    expect(page.get_by_text("Deleted 2 runs: interview.flac, speech.flac.")).to_be_visible()
    expect(
        page.get_by_text("Skipped 1 run: lecture.flac (still queued: cancel it first).")
    ).to_be_visible()
    assert sorted(rows(ui)) == ["jfk.flac", "lecture.flac"]
    ui.shot("runs-after-delete")
    assert_accessible(ui)
    ui.assert_no_console_errors()


# --- Narrow windows, the language field -----------------------------------------------------


def test_at_390_px_every_nav_link_is_visible_and_clickable_without_scrolling_sideways(ui):
    page = ui.page
    page.set_viewport_size({"width": 390, "height": 800})
    ui.login()
    links = page.get_by_role("navigation", name="Main").get_by_role("link")
    names = links.all_text_contents()
    assert names == ["Transcribe", "Runs", "API token", "API docs"]
    assert no_horizontal_scroll(ui)
    for name in names:
        link = page.get_by_role("navigation", name="Main").get_by_role("link", name=name)
        box = link.bounding_box()
        assert box and box["x"] >= 0 and box["x"] + box["width"] <= 390, (name, box)
        # Nothing covers it: the point a tap lands on is the link.
        assert link.evaluate(
            """a => { const r = a.getBoundingClientRect();
                const hit = document.elementFromPoint(r.x + r.width / 2, r.y + r.height / 2);
                return a.contains(hit); }"""
        ), name
    ui.shot("nav-narrow")
    for name, path in (("Runs", "/runs/"), ("API token", "/accounts/token/"), ("Transcribe", "/")):
        ui.follow(page.get_by_role("navigation", name="Main").get_by_role("link", name=name), path)
        assert no_horizontal_scroll(ui), path
    ui.assert_no_console_errors()


def test_the_language_list_offers_detection_and_follows_the_chosen_model(ui):
    """A list of languages by name, "Detect automatically" first; an English-only model
    leaves only detection and English, and no translation."""
    page = ui.page
    ui.login()
    language, model, task = page.locator("#language"), page.locator("#model"), page.locator("#task")
    assert language.evaluate("s => s.options[s.selectedIndex].text") == "Detect automatically"
    names = language.locator("option").all_text_contents()
    assert "German" in names and "Japanese" in names and len(names) == 101  # Detect + 100
    enabled = "s => Array.from(s.options).filter(o => !o.disabled).map(o => o.value)"

    model.select_option("tiny.en")
    assert language.evaluate(enabled) == ["", "en"]
    assert task.locator("option[value=translate]").is_disabled()

    model.select_option("base")
    offered = language.evaluate(enabled)
    assert len(offered) == 100 and "yue" not in offered  # detection and base's 99
    language.select_option(label="German")
    task.select_option("translate")
    model.select_option("tiny.en")  # German is not English: back to detection
    assert language.input_value() == "" and task.input_value() == "transcribe"


# --- Accessibility and the keyboard ---------------------------------------------------------


def test_the_pages_pass_the_accessibility_check_in_their_main_states(ui):
    from playwright.sync_api import expect

    page = ui.page
    page.goto(ui.url("/accounts/login/"))
    assert_accessible(ui)
    page.get_by_label("Username").fill("alice")
    page.get_by_label("Password").fill("wrong")
    page.get_by_role("button", name="Log in").click()
    expect(page.get_by_role("alert")).to_be_visible()
    assert_accessible(ui)

    ui.login()
    expect(page.locator("#worker-banner")).to_be_visible()  # no worker: the banner too
    assert_accessible(ui)
    page.set_input_files("#files", str(JFK))
    expect(upload_item(ui, "jfk.flac").locator(".badge")).to_have_text("Ready")
    assert_accessible(ui)
    page.get_by_role("button", name="Transcribe").click()
    expect(upload_item(ui, "jfk.flac").locator(".badge")).to_have_text("Queued", timeout=30_000)
    assert_accessible(ui)

    page.goto(ui.url("/runs/"))
    expect(page.locator("tr[data-run-id]")).to_have_count(1)
    assert_accessible(ui)
    page.goto(ui.url("/runs/?q=nothing-matches"))
    expect(page.get_by_text("No runs match.")).to_be_visible()
    assert_accessible(ui)
    page.goto(ui.url("/accounts/token/"))
    assert_accessible(ui)
    ui.assert_no_console_errors()


def focus_is_visible(ui: UI, selector: str) -> bool:
    """The focused element (or the drop zone around the hidden file input) shows a focus ring."""
    return bool(
        ui.page.evaluate(
            """s => { const el = document.querySelector(s);
                const style = getComputedStyle(el);
                return style.boxShadow !== "none" || (style.outlineStyle !== "none"
                    && parseFloat(style.outlineWidth) > 0); }""",
            selector,
        )
    )


def test_upload_cancel_and_open_the_transcript_with_the_keyboard_alone(ui):
    from playwright.sync_api import expect

    page = ui.page
    ui.login()
    tab_to(ui, "#files")
    assert focus_is_visible(ui, "#dropzone")
    with page.expect_file_chooser() as chooser:
        page.keyboard.press("Space")
    chooser.value.set_files(str(JFK))
    item = upload_item(ui, "jfk.flac")
    expect(item.locator(".badge")).to_have_text("Ready")

    tab_to(ui, "#start")
    assert focus_is_visible(ui, "#start")
    page.keyboard.press("Enter")
    expect(item.locator(".badge")).to_have_text("Queued", timeout=30_000)

    tab_to(ui, "li.upload .upload-cancel")
    assert focus_is_visible(ui, "li.upload .upload-cancel")
    page.keyboard.press("Enter")
    expect(item.locator(".badge")).to_have_text("Cancelled")

    tab_to(ui, "li.upload .upload-link a")
    assert focus_is_visible(ui, "li.upload .upload-link a")
    href = item.locator(".upload-link a").get_attribute("href")
    page.keyboard.press("Enter")
    page.wait_for_url(ui.url(href))
    expect(page.locator("#run-badge")).to_have_text("Cancelled")

    # And on the runs page: the row's link opens with Enter too.
    page.goto(ui.url("/runs/"))
    tab_to(ui, "tr[data-run-id] .cell-file a")
    assert focus_is_visible(ui, "tr[data-run-id] .cell-file a")
    page.keyboard.press("Enter")
    page.wait_for_url(ui.url(href))
    ui.assert_no_console_errors()
