"""The transcript page as a workplace, in Chromium on real web (and worker) processes: manage
the run (delete, retry), search with highlights, follow the player, copy the text, download
every format, correct a segment in place; with the keyboard alone, and accessibly.

Most tests open a run seeded as a worker leaves it (jfk.flac, its segments and words): what
they check is the page, not the engine. The live test runs a real worker.
"""

from __future__ import annotations

import json
import re
import shutil
import uuid
from pathlib import Path
from typing import Any

import pytest

from tests.browser import UI, assert_accessible, requires_chromium, tab_to
from tests.conftest import JFK, long_speech
from transcription.models import Audio, RunMode, RunStatus, TranscriptRun

pytestmark = [requires_chromium, pytest.mark.slow]

LINES = [
    (0.0, 3.0, "And so my fellow Americans,"),
    (3.0, 7.6, "ask not what your country can do for you,"),
    (7.6, 11.0, "ask what you can do for your country."),
]


def _words(start: float, end: float, text: str) -> list[dict[str, Any]]:
    words = text.split()
    step = (end - start) / len(words)
    return [
        {
            "start": round(start + i * step, 3),
            "end": round(start + (i + 1) * step, 3),
            "word": f" {word}",
            "probability": 0.9,
        }
        for i, word in enumerate(words)
    ]


def seed_run(
    service: Any,
    *,
    status: str = RunStatus.SUCCEEDED,
    lines: list[tuple[float, float, str]] = LINES,
    words: bool = True,
) -> str:
    """A run of jfk.flac as a worker leaves it, its audio stored where the web process reads it."""
    uploads = service.processes.data_dir / "uploads"
    uploads.mkdir(exist_ok=True)
    stored_name = uuid.uuid4().hex
    shutil.copy(JFK, uploads / stored_name)
    audio = Audio.objects.create(
        owner=service.account.user,
        stored_name=stored_name,
        original_filename="jfk.flac",
        content_type="audio/flac",
        size_bytes=JFK.stat().st_size,
        duration_ms=11000,
        sha256="0" * 64,
    )
    segments = [
        {
            "id": i,
            "start": start,
            "end": end,
            "text": text,
            **({"words": _words(start, end, text)} if words else {}),
        }
        for i, (start, end, text) in enumerate(lines)
    ]
    succeeded = status == RunStatus.SUCCEEDED
    run = TranscriptRun.objects.create(
        owner=service.account.user,
        audio=audio,
        status=status,
        mode=RunMode.ASYNC,
        model="tiny.en",
        word_timestamps=words,
        progress=100.0 if succeeded else 30.0,
        text=" ".join(text for _, _, text in lines) if succeeded else "",
        segments=segments if succeeded else [],
        detected_language="en",
        language_probability=0.99,
        error_code="undecodable" if status == RunStatus.FAILED else "",
        error_message="The audio could not be decoded." if status == RunStatus.FAILED else "",
    )
    return str(run.pk)


@pytest.fixture
def run_id(service) -> str:  # type: ignore[no-untyped-def]
    """Made before the browser starts (tests/browser.py: no ORM once it runs)."""
    return seed_run(service)


def open_run(ui: UI, run_id: str) -> None:
    ui.login()
    ui.page.goto(ui.url(f"/runs/{run_id}/"), wait_until="load")
    ui.page.locator(".segment").first.wait_for()


def focused(ui: UI) -> str:
    """What has the keyboard focus, as `tag#id.class` with its accessible text."""
    return str(
        ui.page.evaluate(
            """() => { const e = document.activeElement;
                return e.tagName.toLowerCase() + (e.id ? '#' + e.id : '') +
                    (e.className ? '.' + String(e.className).split(' ').join('.') : '') +
                    ' ' + (e.getAttribute('aria-label') || e.textContent || '').trim(); }"""
        )
    )


# --- Manage the run -------------------------------------------------------------------------


def test_delete_a_run_from_its_page_after_confirming(run_id, ui):
    from playwright.sync_api import expect

    page = ui.page
    open_run(ui, run_id)
    delete = page.get_by_role("button", name="Delete", exact=True)
    expect(page.locator("#run-retry")).to_be_hidden()  # a succeeded run cannot be retried
    expect(page.locator("#run-cancel")).to_be_hidden()

    delete.click()
    dialog = page.get_by_role("dialog", name="Delete this run?")
    expect(dialog).to_be_visible()
    expect(dialog).to_contain_text("jfk.flac")
    assert "delete-keep" in focused(ui)  # the safe choice has the focus
    assert_accessible(ui)
    page.keyboard.press("Escape")
    expect(dialog).to_be_hidden()
    assert "run-delete" in focused(ui)
    assert ui.service.api("GET", f"/api/runs/{run_id}").status_code == 200

    delete.click()
    dialog.get_by_role("button", name="Delete the run").click()

    page.wait_for_url(ui.url("/runs/"))
    assert ui.service.api("GET", f"/api/runs/{run_id}").status_code == 404
    ui.assert_no_console_errors()


def test_a_running_run_offers_cancel_and_a_failed_one_retry_but_neither_delete_while_active(ui):
    from playwright.sync_api import expect

    page = ui.page
    queued = ui.service.submit(JFK)  # no worker: it stays queued
    ui.login()
    page.goto(ui.url(f"/runs/{queued['runId']}/"))
    expect(page.locator("#run-badge")).to_have_text("Queued")
    expect(page.locator("#run-cancel")).to_be_visible()
    expect(page.locator("#run-delete")).to_be_hidden()
    expect(page.locator("#run-retry")).to_be_hidden()

    page.locator("#run-cancel").click()

    expect(page.locator("#run-badge")).to_have_text("Cancelled")
    expect(page.locator("#run-retry")).to_be_visible()
    expect(page.locator("#run-delete")).to_be_visible()
    page.locator("#run-retry").click()
    expect(page.locator("#run-badge")).to_have_text("Queued")
    expect(page.locator("#run-delete")).to_be_hidden()
    assert ui.service.api("GET", f"/api/runs/{queued['runId']}").json()["status"] == "queued"
    ui.assert_no_console_errors()


# --- Search ---------------------------------------------------------------------------------


def test_search_highlights_every_match_and_steps_through_them_with_the_keys(run_id, ui):
    from playwright.sync_api import expect

    page = ui.page
    open_run(ui, run_id)
    search = page.get_by_role("searchbox", name="Search the transcript")
    count = page.locator("#search-count")

    search.fill("COUNTRY")
    expect(count).to_have_text("1 of 2")
    expect(page.locator("#segments mark.hit")).to_have_count(2)
    expect(page.locator("#segments mark.hit").first).to_have_text("country")
    expect(page.locator("mark.hit.is-active")).to_have_count(1)
    active = page.locator("mark.hit.is-active")
    assert active.evaluate("m => m.closest('li').dataset.id") == "1"
    assert_accessible(ui)

    search.press("Enter")
    expect(count).to_have_text("2 of 2")
    assert active.evaluate("m => m.closest('li').dataset.id") == "2"
    search.press("Enter")
    expect(count).to_have_text("1 of 2")  # round again
    search.press("Shift+Enter")
    expect(count).to_have_text("2 of 2")
    page.get_by_role("button", name="Previous match").click()
    expect(count).to_have_text("1 of 2")

    search.press("Escape")
    expect(search).to_have_value("")
    expect(count).to_have_text("")
    expect(page.locator("#segments mark")).to_have_count(0)
    # The lines are whole again, exactly as before.
    texts = page.locator(".seg-text").all_text_contents()
    assert texts == [text for _, _, text in LINES]

    # Characters that mean something to a RegExp or to HTML are searched for as themselves.
    for query in ("(", ".*", "[a-z", "\\", "<b>", "&amp;"):
        search.fill(query)
        expect(count).to_have_text("No matches")
    expect(page.locator("#segments mark")).to_have_count(0)
    ui.assert_no_console_errors()


def test_search_finds_html_and_regex_characters_in_corrected_text_as_plain_text(run_id, ui):
    from playwright.sync_api import expect

    page = ui.page
    tricky = "<b>bold</b> & (a+b)* costs $5.00 [sic] \\o/"
    assert (
        ui.service.api("PATCH", f"/api/runs/{run_id}/segments/0", json={"text": tricky}).status_code
        == 200
    )
    open_run(ui, run_id)
    search = page.get_by_role("searchbox", name="Search the transcript")

    for query, hits in (
        ("<b>", 1),
        ("(a+b)*", 1),
        ("$5.00", 1),
        ("[sic]", 1),
        ("\\o/", 1),
        ("b", 4),
    ):
        search.fill(query)
        expect(page.locator("#search-count")).to_have_text(f"1 of {hits}")
        expect(page.locator("#segments mark.hit").first).to_have_text(query, ignore_case=True)

    # Shown as text: no element was made of the transcript's markup.
    assert page.locator("#segments b").count() == 0
    assert page.locator(".seg-text").first.text_content() == tricky
    ui.assert_no_console_errors()


# --- The player -----------------------------------------------------------------------------

# Thirty short lines over the 11 s of jfk.flac: more than a small window shows at once.
MANY_LINES = [
    (round(i * 11 / 30, 3), round((i + 1) * 11 / 30, 3), f"Line number {i} of the speech.")
    for i in range(30)
]


@pytest.fixture
def long_run(service) -> str:  # type: ignore[no-untyped-def]
    return seed_run(service, lines=MANY_LINES, words=False)


def in_view(ui: UI, selector: str) -> bool:
    return bool(
        ui.page.evaluate(
            """s => { const e = document.querySelector(s); if (!e) return false;
                const r = e.getBoundingClientRect();
                return r.top >= 0 && r.bottom <= window.innerHeight; }""",
            selector,
        )
    )


def test_the_playing_line_is_highlighted_and_kept_in_view_until_following_is_turned_off(
    long_run, ui
):
    from playwright.sync_api import expect

    page = ui.page
    page.set_viewport_size({"width": 900, "height": 520})
    open_run(ui, long_run)
    page.wait_for_function("() => document.getElementById('audio').readyState >= 1", timeout=30_000)
    follow = page.get_by_role("checkbox", name="Follow playback")
    expect(follow).to_be_checked()

    page.locator(".segment").first.click()  # plays from the start
    page.wait_for_function(
        """() => document.querySelector('.segment.is-current') &&
            Number(document.querySelector('.segment.is-current').dataset.start) > 5""",
        timeout=20_000,
    )
    current = page.locator(".segment.is-current")
    expect(current).to_have_count(1)
    expect(current).to_have_attribute("aria-current", "true")
    page.wait_for_timeout(800)  # a smooth scroll under way
    assert in_view(ui, ".segment.is-current"), "the line being played is out of view"

    # Off: the page stays where the reader put it while the player goes on.
    follow.uncheck()
    page.evaluate("window.scrollTo(0, 0)")
    page.evaluate("document.getElementById('audio').currentTime = 10")
    page.wait_for_function(
        "() => Number(document.querySelector('.segment.is-current')?.dataset.start) > 9.5",
        timeout=10_000,
    )
    page.wait_for_timeout(500)
    assert page.evaluate("window.scrollY") == 0
    assert not in_view(ui, ".segment.is-current")

    # Scrolling by hand while it plays turns following off too.
    follow.check()
    page.evaluate("document.getElementById('audio').currentTime = 0")
    page.evaluate("document.getElementById('audio').play()")
    page.mouse.move(450, 300)
    page.mouse.wheel(0, 200)
    expect(follow).not_to_be_checked()
    page.evaluate("document.getElementById('audio').pause()")
    ui.assert_no_console_errors()


def test_play_from_a_line_with_the_keyboard(run_id, ui):
    page = ui.page
    open_run(ui, run_id)
    page.wait_for_function("() => document.getElementById('audio').readyState >= 1", timeout=30_000)

    tab_to(ui, '.segment[data-id="2"]')
    page.keyboard.press("Enter")

    page.wait_for_function(
        "() => Math.abs(document.getElementById('audio').currentTime - 7.6) < 1.5",
        timeout=10_000,
    )
    page.evaluate("document.getElementById('audio').pause()")
    ui.assert_no_console_errors()


# --- Copy and download ----------------------------------------------------------------------


def test_copy_all_text_to_the_clipboard_with_a_confirmation(run_id, ui):
    from playwright.sync_api import expect

    page = ui.page
    page.context.grant_permissions(["clipboard-read", "clipboard-write"], origin=ui.url(""))
    ui.service.api("PATCH", f"/api/runs/{run_id}/segments/1", json={"text": "ask not, ever,"})
    open_run(ui, run_id)

    page.get_by_role("button", name="Copy text").click()

    expected = ui.service.api("GET", f"/api/runs/{run_id}").json()["text"]
    expect(page.locator("#copy-status")).to_have_text(f"Copied {len(expected.split())} words")
    assert page.evaluate("navigator.clipboard.readText()") == expected
    ui.assert_no_console_errors()


def test_copy_falls_back_when_the_clipboard_api_is_missing(run_id, ui):
    from playwright.sync_api import expect

    page = ui.page
    page.add_init_script(
        """Object.defineProperty(navigator, "clipboard", {value: undefined});
        document.addEventListener("copy", e => {
            const box = e.target;
            window.__copied = box.value.substring(box.selectionStart, box.selectionEnd);
        });"""
    )
    open_run(ui, run_id)

    page.get_by_role("button", name="Copy text").click()

    expect(page.locator("#copy-status")).to_contain_text("Copied")
    assert page.evaluate("window.__copied") == " ".join(text for _, _, text in LINES)
    assert "copy-text" in focused(ui)
    ui.assert_no_console_errors()


def download(ui: UI, link: Any) -> str:
    with ui.page.expect_download() as got:
        link.click()
    return Path(got.value.path()).read_text()


def test_download_every_format_with_word_timestamps_and_with_or_without_corrections(run_id, ui):
    from playwright.sync_api import expect

    page = ui.page
    ui.service.api("PATCH", f"/api/runs/{run_id}/segments/1", json={"text": "Ask NOT."})
    open_run(ui, run_id)
    group = page.get_by_role("group", name="Download")

    files = {
        fmt: download(ui, group.get_by_role("link", name=fmt, exact=True))
        for fmt in ("txt", "srt", "vtt", "tsv", "json")
    }
    assert "Ask NOT." in files["txt"] and "ask not what" not in files["txt"]
    assert "00:00:03,000 --> 00:00:07,600\nAsk NOT.\n" in files["srt"]
    assert files["vtt"].startswith("WEBVTT") and "Ask NOT." in files["vtt"]
    assert "3000\t7600\tAsk NOT." in files["tsv"]
    segment = json.loads(files["json"])["segments"][1]
    assert segment["text"] == "Ask NOT." and segment["originalText"] == LINES[1][2]

    words = download(ui, group.get_by_role("link", name="vtt with word timestamps"))
    cues = re.findall(r"^(\d\d:\d\d:\d\d\.\d{3}) --> ", words, re.MULTILINE)
    assert len(cues) == 5 + 1 + 8  # words of line 0, corrected line 1 whole, words of line 2
    assert "\nfellow\n" in words
    tsv_words = download(ui, group.get_by_role("link", name="tsv with word timestamps"))
    assert tsv_words.splitlines()[1] == "0\t600\tAnd"

    # The model's own text, on request.
    original = page.get_by_role("checkbox", name="The model's text, without my corrections")
    original.check()
    srt = download(ui, group.get_by_role("link", name="srt", exact=True))
    assert LINES[1][2] in srt and "Ask NOT." not in srt
    words = download(ui, group.get_by_role("link", name="srt with word timestamps"))
    assert "\nnot\n" in words
    original.uncheck()
    expect(group.get_by_role("link", name="srt", exact=True)).not_to_have_attribute(
        "href", re.compile("version=original")
    )
    ui.assert_no_console_errors()


@pytest.fixture
def run_without_words(service) -> str:  # type: ignore[no-untyped-def]
    return seed_run(service, words=False)


def test_a_run_without_word_timestamps_offers_no_word_files(run_without_words, ui):
    from playwright.sync_api import expect

    page = ui.page
    open_run(ui, run_without_words)

    group = page.get_by_role("group", name="Download")
    expect(group.get_by_role("link")).to_have_count(5)
    expect(page.get_by_text("Word timestamps")).to_have_count(0)
    # Nothing corrected yet: no choice of versions.
    expect(page.get_by_role("checkbox", name=re.compile("model"))).to_be_hidden()


# --- Corrections ----------------------------------------------------------------------------


def test_correct_a_line_with_the_keyboard_alone_and_restore_the_models_text(run_id, ui):
    from playwright.sync_api import expect

    page = ui.page
    open_run(ui, run_id)
    line = page.locator('li.seg[data-id="1"]')

    tab_to(ui, 'li.seg[data-id="1"] .seg-edit')
    assert "Edit the line at 0:03" in focused(ui)
    page.keyboard.press("Enter")
    editor = page.get_by_role("textbox", name="Text of the line at 0:03")
    expect(editor).to_be_focused()
    expect(editor).to_have_value(LINES[1][2])
    page.get_by_role("searchbox").fill("country")  # the README's picture: both at work
    editor.focus()
    assert_accessible(ui)
    ui.shot("editing", docs="transcript-page.png")

    # Escape: nothing changes, and the focus goes back where it was.
    page.keyboard.press("Escape")
    expect(editor).to_have_count(0)
    assert "Edit the line at 0:03" in focused(ui)
    assert not ui.service.api("GET", f"/api/runs/{run_id}").json()["segments"][1].get("edited")

    # Ctrl+Enter saves; markup in the text stays text.
    page.keyboard.press("Enter")
    page.keyboard.press("Control+a")
    page.keyboard.type('Ask not <img src=x onerror="window.__owned=1"> what & why')
    page.keyboard.press("Control+Enter")
    expect(line.locator(".seg-text")).to_have_text(
        'Ask not <img src=x onerror="window.__owned=1"> what & why'
    )
    expect(line.get_by_role("button", name=re.compile("^Edited"))).to_be_visible()
    assert page.locator("#segments img").count() == 0
    assert page.evaluate("window.__owned") is None
    assert "Edit the line at 0:03" in focused(ui)
    run = ui.service.api("GET", f"/api/runs/{run_id}").json()
    assert run["segments"][1]["text"] == 'Ask not <img src=x onerror="window.__owned=1"> what & why'
    assert run["segments"][1]["originalText"] == LINES[1][2]

    # After a reload the correction is there, marked; the model's text is a key away.
    page.reload(wait_until="load")
    expect(line.locator(".seg-text")).to_contain_text("Ask not <img")
    tab_to(ui, 'li.seg[data-id="1"] .edited-mark')
    page.keyboard.press("Enter")
    expect(line.locator(".seg-original")).to_contain_text(LINES[1][2])
    assert_accessible(ui)
    tab_to(ui, 'li.seg[data-id="1"] .seg-restore')
    page.keyboard.press("Enter")
    expect(line.locator(".seg-text")).to_have_text(LINES[1][2])
    expect(line.locator(".edited-mark")).to_have_count(0)
    assert not ui.service.api("GET", f"/api/runs/{run_id}").json()["segments"][1].get("edited")
    ui.assert_no_console_errors()


def test_a_refused_correction_says_why_and_keeps_the_editor_open(run_id, ui):
    from playwright.sync_api import expect

    page = ui.page
    open_run(ui, run_id)
    page.locator('li.seg[data-id="0"] .seg-edit').click()
    editor = page.get_by_role("textbox", name="Text of the line at 0:00")
    # Past the limit (maxlength stops typing; a paste or a script does not).
    editor.evaluate("t => { t.removeAttribute('maxlength'); t.value = 'x'.repeat(1001); }")

    page.get_by_role("button", name="Save").click()

    expect(page.locator(".seg-editor .alert")).to_contain_text("Not saved:")
    expect(page.locator(".seg-editor .alert")).to_contain_text("1000")
    expect(editor).to_be_focused()
    page.get_by_role("button", name="Cancel", exact=True).click()
    expect(page.locator('li.seg[data-id="0"] .seg-text')).to_have_text(LINES[0][2])
    ui.allow_console_error(r"status of 400")
    ui.assert_no_console_errors()


@pytest.fixture
def carols_run(service) -> str:  # type: ignore[no-untyped-def]
    """Someone else's run, and Alice (who logs in) made staff."""
    from django.contrib.auth import get_user_model

    run_id = seed_run(service)
    carol = get_user_model().objects.create_user(username="carol", password="x")
    TranscriptRun.objects.filter(pk=run_id).update(owner=carol)
    Audio.objects.filter(runs__pk=run_id).update(owner=carol)
    get_user_model().objects.filter(pk=service.account.user.pk).update(is_staff=True)
    return run_id


def test_staff_can_read_someone_elses_transcript_but_not_correct_it(carols_run, ui):
    from playwright.sync_api import expect

    page = ui.page
    open_run(ui, carols_run)

    expect(page.locator(".segment")).to_have_count(3)
    expect(page.locator(".seg-edit")).to_have_count(0)


# --- Live, end to end -----------------------------------------------------------------------


@pytest.fixture
def failed_run(service) -> str:  # type: ignore[no-untyped-def]
    return seed_run(service, status=RunStatus.FAILED)


def test_every_state_of_the_page_is_accessible_and_the_bar_only_fills(tmp_path, failed_run, ui):
    from playwright.sync_api import expect

    page = ui.page
    ui.login()
    page.goto(ui.url(f"/runs/{failed_run}/"))
    expect(page.locator("#run-error")).to_have_text("The audio could not be decoded.")
    expect(page.locator("#run-bar")).to_be_hidden()
    assert_accessible(ui)

    # Decoded one window after another, long enough to be seen processing.
    run = ui.service.submit(long_speech(tmp_path / "talk.wav", repeats=6))
    page.goto(ui.url(f"/runs/{run['runId']}/"))
    expect(page.locator("#run-badge")).to_have_text("Queued")
    assert_accessible(ui)
    page.locator("#run-bar").evaluate(
        """bar => {
            window.__bar = [];
            new MutationObserver(() => window.__bar.push(Number(bar.getAttribute("aria-valuenow"))))
                .observe(bar, {attributes: true, attributeFilter: ["aria-valuenow"]});
        }"""
    )

    ui.service.worker(WHISPER_BATCH_SIZE="0")
    page.wait_for_function(
        """() => document.getElementById("run").dataset.status === "processing"
              && document.querySelectorAll(".segment").length > 0""",
        timeout=120_000,
        polling=50,
    )
    page.get_by_role("searchbox").fill("country")  # search works on a growing transcript
    assert_accessible(ui)

    expect(page.locator("#run-badge")).to_have_text("Done", timeout=180_000)
    bar = page.locator("#run-bar")
    expect(bar).to_be_visible()
    expect(bar).to_have_attribute("aria-valuenow", "100")
    values = page.evaluate("window.__bar")
    assert values and values == sorted(values) and values[-1] == 100, values
    expect(page.locator(".seg-edit").first).to_be_visible()  # the finished run is editable
    expect(page.locator("#search-count")).to_contain_text("of")
    assert_accessible(ui)
    ui.assert_no_console_errors()


def test_cancel_a_run_with_the_keyboard(ui):
    from playwright.sync_api import expect

    page = ui.page
    run = ui.service.submit(JFK)
    ui.login()
    page.goto(ui.url(f"/runs/{run['runId']}/"))
    expect(page.locator("#run-badge")).to_have_text("Queued")

    tab_to(ui, "#run-cancel")
    page.keyboard.press("Enter")

    expect(page.locator("#run-badge")).to_have_text("Cancelled")
    assert ui.service.api("GET", f"/api/runs/{run['runId']}").json()["status"] == "cancelled"
    assert_accessible(ui)
    # Retry, then delete it, still from the keyboard.
    tab_to(ui, "#run-retry")
    page.keyboard.press("Enter")
    expect(page.locator("#run-badge")).to_have_text("Queued")
    assert "run-cancel" in focused(ui)
    page.keyboard.press("Enter")
    expect(page.locator("#run-badge")).to_have_text("Cancelled")
    tab_to(ui, "#run-delete")
    page.keyboard.press("Enter")
    page.keyboard.press("Shift+Tab")  # from "Keep it" to "Delete the run"
    assert "delete-confirm" in focused(ui), focused(ui)
    page.keyboard.press("Enter")
    page.wait_for_url(ui.url("/runs/"))
    ui.assert_no_console_errors()


# --- Speakers (channels=separate) ------------------------------------------------------------


@pytest.fixture
def two_speakers(service) -> str:  # type: ignore[no-untyped-def]
    run_id = seed_run(service, words=False)
    run = TranscriptRun.objects.get(pk=run_id)
    names = ["Alice", "Bob"]
    segments = [
        {**segment, "speaker": names[i % 2], "channel": i % 2}
        for i, segment in enumerate(run.segments)
    ]
    TranscriptRun.objects.filter(pk=run_id).update(
        channels="separate", speaker_names=names, segments=segments
    )
    Audio.objects.filter(pk=run.audio_id).update(channels=2)
    return run_id


def test_each_speaker_has_a_colour_and_the_transcript_can_show_one_speaker(two_speakers, ui):
    page = ui.page
    open_run(ui, two_speakers)

    chips = page.locator(".segment .speaker")
    names = [name.rstrip(":") for name in chips.evaluate_all("es => es.map(e => e.textContent)")]
    assert names[:2] == ["Alice", "Bob"] and set(names) == {"Alice", "Bob"}
    colours = {chips.nth(i).evaluate("e => getComputedStyle(e).backgroundColor") for i in range(2)}
    assert len(colours) == 2  # one colour each
    assert page.locator(".segment").first.evaluate("e => e.textContent").count("Alice:") == 1
    assert_accessible(ui)

    page.get_by_label("Speaker").select_option("Bob")
    visible = page.locator("li.seg:not([hidden])")
    assert visible.count() == names.count("Bob")
    shown = visible.locator(".speaker").evaluate_all("es => es.map(e => e.textContent)")
    assert set(shown) == {"Bob:"}
    page.get_by_label("Speaker").select_option("")
    assert page.locator("li.seg:not([hidden])").count() == len(names)
    ui.assert_no_console_errors()
