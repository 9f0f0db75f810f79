"""The web pages: what a person sees in a browser, on real web and worker processes.

The browser tests drive Debian's Chromium with Playwright (tests/browser.py) and are skipped
when /usr/bin/chromium is missing.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import httpx
import pytest
from django.test import Client
from django.utils import timezone
from rest_framework.authtoken.models import Token

from tests import conftest
from tests.browser import (
    no_horizontal_scroll,
    requires_chromium,
    upload_item,
)
from tests.conftest import (
    JFK,
    Account,
    long_speech,
    queued_run,
    wait_until,
)
from transcription.models import Audio

JFK_WORDS = re.compile(r"ask not what your country can do for you", re.IGNORECASE)


# --- The audio view and the token page (Django's test client, no browser) -----------------


@pytest.fixture
def alices_run(alice) -> str:  # type: ignore[no-untyped-def]
    return str(queued_run(alice.client)["runId"])


def logged_in(account: Account) -> Client:
    client = Client()
    client.force_login(account.user)  # type: ignore[arg-type]
    return client


def body_of(response: Any) -> bytes:
    return b"".join(response) if response.streaming else bytes(response.content)


@pytest.mark.django_db
@pytest.mark.filterwarnings("ignore:StreamingHttpResponse must consume:Warning")
def test_audio_is_served_to_its_owner_with_byte_ranges(alice, alices_run, jfk):
    client = logged_in(alice)
    whole = jfk.read_bytes()

    response = client.get(f"/runs/{alices_run}/audio")
    assert response.status_code == 200
    assert response["Content-Type"] == "audio/flac"
    assert response["Accept-Ranges"] == "bytes"
    assert body_of(response) == whole

    # The player seeks with ranges.
    response = client.get(f"/runs/{alices_run}/audio", HTTP_RANGE="bytes=100-199")
    assert response.status_code == 206
    assert response["Content-Range"] == f"bytes 100-199/{len(whole)}"
    assert body_of(response) == whole[100:200]

    response = client.get(f"/runs/{alices_run}/audio", HTTP_RANGE="bytes=-10")
    assert response.status_code == 206
    assert body_of(response) == whole[-10:]

    response = client.get(f"/runs/{alices_run}/audio", HTTP_RANGE=f"bytes={len(whole)}-")
    assert response.status_code == 416
    assert response["Content-Range"] == f"bytes */{len(whole)}"


@pytest.mark.django_db
def test_audio_of_someone_elses_run_is_not_found(bob, alices_run):
    assert logged_in(bob).get(f"/runs/{alices_run}/audio").status_code == 404
    assert logged_in(bob).get(f"/runs/{alices_run}/").status_code == 404


@pytest.mark.django_db
def test_audio_needs_a_login(alices_run):
    response = Client().get(f"/runs/{alices_run}/audio")
    assert response.status_code == 302
    assert response["Location"].startswith("/accounts/login/")


@pytest.mark.django_db
def test_purged_audio_is_a_404_that_says_why(alice, alices_run):
    Audio.objects.filter(runs__id=alices_run).update(purged_at=timezone.now())

    response = logged_in(alice).get(f"/runs/{alices_run}/audio")

    assert response.status_code == 404
    assert "deleted by the retention policy" in response.content.decode()
    # The transcript page says so instead of offering a player.
    page = logged_in(alice).get(f"/runs/{alices_run}/").content.decode()
    assert "<audio" not in page
    assert "deleted by the retention policy" in page


@pytest.mark.django_db
def test_regenerating_the_token_revokes_the_old_one(alice):
    client = Client(enforce_csrf_checks=True)
    client.force_login(alice.user)

    page = client.get("/accounts/token/")
    assert alice.token in page.content.decode()
    assert client.post("/accounts/token/").status_code == 403  # no CSRF token: refused

    csrf = page.cookies["csrftoken"].value
    response = client.post("/accounts/token/", HTTP_X_CSRFTOKEN=csrf)
    assert response.status_code == 302

    new_key = Token.objects.get(user=alice.user).key
    assert new_key != alice.token
    assert new_key in client.get("/accounts/token/").content.decode()
    assert not Token.objects.filter(key=alice.token).exists()


# --- Browser tests --------------------------------------------------------------------------


@requires_chromium
@pytest.mark.slow
def test_upload_shows_upload_queue_and_live_progress_then_the_transcript(ui, tmp_path):
    from playwright.sync_api import expect

    page = ui.page
    long_file = long_speech(tmp_path / "lecture.wav", repeats=8)  # ~95 s of speech
    ui.login()
    ui.mark_page()

    page.set_input_files("#files", [str(JFK), str(long_file)])
    jfk, lecture = upload_item(ui, "jfk.flac"), upload_item(ui, "lecture.wav")
    expect(jfk.locator(".badge")).to_have_text("Ready")
    # Every value the bar of jfk.flac takes, upload then transcription, as the page sets it.
    jfk.locator(".bar").evaluate(
        """bar => {
            window.__jfkBar = [];
            new MutationObserver(() => window.__jfkBar.push(
                [bar.dataset.phase, Number(bar.getAttribute("aria-valuenow"))]
            )).observe(bar, {attributes: true, attributeFilter: ["aria-valuenow"]});
        }"""
    )
    page.get_by_role("button", name="Transcribe 2 files").click()

    # No worker yet: both wait in the queue, in order.
    expect(jfk.locator(".badge")).to_have_text("Queued", timeout=30_000)
    expect(jfk.locator(".upload-detail")).to_contain_text("1st in line")
    expect(lecture.locator(".badge")).to_have_text("Queued", timeout=30_000)
    expect(lecture.locator(".upload-detail")).to_contain_text("2nd in line")
    ui.shot("queued")

    ui.service.worker()

    expect(jfk.locator(".bar")).to_have_attribute("aria-valuenow", "100", timeout=120_000)
    expect(jfk.locator(".badge")).to_have_text("Done", timeout=30_000)
    expect(jfk.locator(".upload-text")).to_have_text(JFK_WORDS)
    bar = page.evaluate("window.__jfkBar")
    upload = [value for phase, value in bar if phase == "upload"]
    transcription = [value for phase, value in bar if phase == "transcribe"]
    assert upload and upload[-1] == 100, bar
    assert bar.index(["transcribe", transcription[0]]) > bar.index(["upload", 100]), bar
    assert transcription == sorted(transcription) and transcription[-1] == 100, bar

    # The second file, part-way through: the README's picture of the upload page.
    page.wait_for_function(
        """() => {
            const item = [...document.querySelectorAll("li.upload")]
                .find(li => li.textContent.includes("lecture.wav"));
            const value = Number(item.querySelector(".bar").getAttribute("aria-valuenow"));
            return item.dataset.state === "processing" && value >= 15 && value <= 90;
        }""",
        timeout=120_000,
        polling=50,
    )
    expect(lecture.locator(".upload-detail")).to_contain_text("%")
    ui.shot("processing", docs="upload-page.png")
    expect(lecture.locator(".badge")).to_have_text("Done", timeout=180_000)
    ui.assert_not_reloaded()
    ui.shot("done")

    # The transcript page: segments with timestamps, a player, downloads.
    ui.follow(
        jfk.get_by_role("link", name="Open the transcript of jfk.flac"),
        jfk.get_by_role("link").get_attribute("href"),
    )
    expect(page.get_by_role("heading", name="jfk.flac")).to_be_visible()
    segments = page.locator(".segment")
    expect(segments.first).to_be_visible()
    expect(page.locator("#segments")).to_contain_text(JFK_WORDS)
    expect(page.locator("#run-badge")).to_have_text("Done")
    page.wait_for_function("document.getElementById('audio').readyState >= 1", timeout=30_000)
    last = segments.last
    start = float(last.get_attribute("data-start") or 0)
    last.click()
    page.wait_for_function(
        f"Math.abs(document.getElementById('audio').currentTime - {start}) < 1.5", timeout=10_000
    )
    page.evaluate("document.getElementById('audio').pause()")
    with page.expect_download() as download:
        page.get_by_role("link", name="srt").click()
    srt = Path(download.value.path()).read_text()
    assert "-->" in srt and JFK_WORDS.search(srt.replace("\n", " "))
    ui.shot("transcript")  # the README picture: tests/test_ui_transcript.py

    # A narrow window: nothing runs off the side.
    page.set_viewport_size({"width": 380, "height": 800})
    assert no_horizontal_scroll(ui)
    ui.shot("transcript-narrow")
    page.goto(ui.url("/runs/"))
    expect(page.locator("tr[data-run-id]")).to_have_count(2)
    assert no_horizontal_scroll(ui)
    ui.shot("runs-narrow")
    page.goto(ui.url("/"))
    page.set_input_files("#files", str(JFK))
    expect(upload_item(ui, "jfk.flac").locator(".badge")).to_have_text("Ready")
    assert no_horizontal_scroll(ui)
    ui.shot("upload-narrow")
    ui.assert_no_console_errors()


@requires_chromium
@pytest.mark.slow
def test_a_failed_run_shows_its_error_and_can_be_retried(ui):
    from playwright.sync_api import expect

    page = ui.page
    run = ui.service.submit(JFK)
    # The stored audio disappears before a worker gets to it: a failure no retry can fix.
    (stored,) = (ui.service.processes.data_dir / "uploads").iterdir()
    stored.unlink()
    ui.allow_console_error(r"status of 404")  # the player asks for the missing audio
    ui.login()
    page.goto(ui.url(f"/runs/{run['runId']}/"))
    expect(page.locator("#run-badge")).to_have_text("Queued")
    expect(page.get_by_text("The audio cannot be played here.")).to_be_visible()

    ui.service.worker()

    expect(page.locator("#run-badge")).to_have_text("Failed", timeout=60_000)
    expect(page.locator("#run-error")).to_have_text("The audio file is no longer stored.")
    expect(page.get_by_role("button", name="Cancel")).to_be_hidden()
    expect(page.locator("#downloads")).to_be_hidden()
    ui.shot("failed")

    page.get_by_role("button", name="Retry").click()
    # Queued again, then failed again (within milliseconds: the worker is idle, so the page
    # may never show the queued state): the page follows the retried run live.
    wait_until(
        lambda: (
            len(ui.service.api("GET", f"/api/runs/{run['runId']}").json()["jobs"]) == 2
            and ui.service.api("GET", f"/api/runs/{run['runId']}").json()["status"] == "failed"
        ),
        60,
        "the retried run to fail again",
    )
    expect(page.locator("#run-badge")).to_have_text("Failed", timeout=60_000)
    expect(page.locator("#run-error")).to_have_text("The audio file is no longer stored.")
    ui.assert_no_console_errors()


@requires_chromium
@pytest.mark.slow
def test_transcript_page_grows_live_and_catches_up_after_the_server_restarts(
    ui, tmp_path, monkeypatch
):
    from playwright.sync_api import expect

    page = ui.page
    # Long enough, decoded one window after another, to be still running when the server
    # stops: in batches the run could end first, and the page then had nothing to reconnect for.
    run = ui.service.submit(long_speech(tmp_path / "interview.wav", repeats=10))
    ui.login()
    page.goto(ui.url(f"/runs/{run['runId']}/"))
    ui.mark_page()
    expect(page.locator("#run-badge")).to_have_text("Queued")
    expect(page.locator("#run-detail")).to_contain_text("1st in line")

    ui.service.worker(WHISPER_BATCH_SIZE="0")
    # Segments appear while the run is still being transcribed.
    page.wait_for_function(
        """() => document.querySelectorAll(".segment").length > 0
              && document.getElementById("run").dataset.status === "processing" """,
        timeout=120_000,
        polling=50,
    )
    ui.shot("growing")

    # The web server goes away mid-run; the worker carries on and finishes without it. A
    # second server, started first so that it cannot take the first one's port, answers the
    # API meanwhile.
    web_process = ui.service.processes.started[0][0]
    port = int(ui.service.web_url.rsplit(":", 1)[1])
    helper = ui.service.processes.web()
    ui.allow_console_error(r"ERR_CONNECTION_REFUSED|ERR_EMPTY_RESPONSE|ERR_INCOMPLETE_CHUNKED")
    ui.service.processes.stop(web_process)
    expect(page.locator("#connection")).to_contain_text("reconnecting", timeout=30_000)
    final = wait_for_run(helper, ui.service.account.token, run["runId"], "succeeded")

    # Back on the same address: the page reconnects with Last-Event-ID and catches up.
    monkeypatch.setattr(conftest, "free_port", lambda: port)
    ui.service.processes.web()
    expect(page.locator("#run-badge")).to_have_text("Done", timeout=60_000)
    expect(page.locator("#connection")).to_be_hidden()
    expect(page.locator("#downloads")).to_be_visible()
    expect(page.locator(".segment")).to_have_count(len(final["segments"]))
    ui.assert_not_reloaded()
    ui.shot("caught-up")
    ui.assert_no_console_errors()


def wait_for_run(base: str, token: str, run_id: str, status: str) -> dict[str, Any]:
    def finished() -> dict[str, Any] | None:
        response = httpx.get(
            f"{base}/api/runs/{run_id}", headers={"Authorization": f"Bearer {token}"}, timeout=10
        )
        run = dict(response.json())
        return run if run["status"] == status else None

    return conftest.wait_until(finished, 180, f"run {run_id} to be {status}")  # type: ignore[return-value]


@requires_chromium
@pytest.mark.slow
def test_cancel_a_queued_run_from_the_page_and_retry_it(ui):
    from playwright.sync_api import expect

    page = ui.page
    ui.login()
    page.set_input_files("#files", str(JFK))
    page.get_by_role("button", name="Transcribe").click()
    item = upload_item(ui, "jfk.flac")
    expect(item.locator(".badge")).to_have_text("Queued", timeout=30_000)

    item.get_by_role("button", name="Cancel jfk.flac").click()

    expect(item.locator(".badge")).to_have_text("Cancelled")
    expect(item.get_by_role("button", name="Cancel jfk.flac")).to_be_hidden()
    run_id = item.get_by_role("link").get_attribute("href").split("/")[2]
    assert ui.service.api("GET", f"/api/runs/{run_id}").json()["status"] == "cancelled"
    ui.shot("upload-cancelled")

    # The transcript page offers a retry, which queues it again; cancel it there too.
    ui.follow(item.get_by_role("link"), f"/runs/{run_id}/")
    expect(page.locator("#run-badge")).to_have_text("Cancelled")
    page.get_by_role("button", name="Retry").click()
    expect(page.locator("#run-badge")).to_have_text("Queued")
    expect(page.locator("#run-detail")).to_contain_text("1st in line")
    assert ui.service.api("GET", f"/api/runs/{run_id}").json()["status"] == "queued"
    page.get_by_role("button", name="Cancel").click()
    expect(page.locator("#run-badge")).to_have_text("Cancelled")
    assert ui.service.api("GET", f"/api/runs/{run_id}").json()["status"] == "cancelled"
    ui.shot("run-cancelled")
    ui.assert_no_console_errors()


@requires_chromium
@pytest.mark.slow
@pytest.mark.parametrize("web_env", [{"MAX_UPLOAD_BYTES": "200000"}])
def test_files_that_cannot_be_transcribed_show_why_next_to_them(ui):
    from playwright.sync_api import expect

    page = ui.page
    ui.login()
    # The server answers 415 for the text file, and the browser logs that refused request.
    ui.allow_console_error(r"status of 415")
    # One file dropped on the drop zone, one chosen (1.1 MB: above what this server takes).
    page.locator("#dropzone").evaluate(
        """zone => {
            const files = new DataTransfer();
            files.items.add(new File(["Shopping list: milk."], "notes.txt", {type: "text/plain"}));
            zone.dispatchEvent(new DragEvent("drop", {dataTransfer: files, bubbles: true}));
        }"""
    )
    page.set_input_files("#files", str(JFK))
    notes, jfk = upload_item(ui, "notes.txt"), upload_item(ui, "jfk.flac")
    expect(notes.locator(".badge")).to_have_text("Ready")
    expect(jfk.locator(".upload-error")).to_have_text(re.compile(r"too large.*limit is 195 KB"))
    page.get_by_role("button", name="Transcribe").click()

    error = notes.get_by_role("alert")
    expect(error).to_contain_text("not audio that LingoLoop can read", timeout=30_000)
    expect(notes.locator(".badge")).to_have_text("Not uploaded")
    expect(notes.locator(".bar")).to_be_hidden()
    assert ui.service.api("GET", "/api/runs").json()["count"] == 0
    ui.shot("errors")
    ui.assert_no_console_errors()


@requires_chromium
@pytest.mark.slow
def test_runs_page_shows_new_and_finished_runs_without_a_reload(ui):
    from playwright.sync_api import expect

    page = ui.page
    ui.login()
    ui.follow(page.get_by_role("link", name="Runs", exact=True), "/runs/")
    expect(page.get_by_text("No runs yet.")).to_be_visible()
    ui.mark_page()

    run = ui.service.submit(JFK)
    row = page.locator(f'tr[data-run-id="{run["runId"]}"]')
    expect(row.locator(".badge")).to_have_text("Queued", timeout=15_000)
    expect(row).to_contain_text("jfk.flac")
    expect(row).to_contain_text("0:11")
    expect(page.get_by_text("No runs yet.")).to_be_hidden()

    assert ui.service.api("POST", f"/api/runs/{run['runId']}/cancel").status_code == 200
    expect(row.locator(".badge")).to_have_text("Cancelled", timeout=15_000)
    ui.assert_not_reloaded()
    ui.shot("runs")

    # What a reload shows agrees.
    page.reload()
    expect(page.locator(f'tr[data-run-id="{run["runId"]}"] .badge')).to_have_text("Cancelled")
    ui.assert_no_console_errors()


@requires_chromium
@pytest.mark.slow
def test_log_in_see_and_regenerate_the_token_and_log_out(ui):
    from playwright.sync_api import expect

    page = ui.page
    page.goto(ui.url("/runs/"))
    expect(page).to_have_url(re.compile(r"/accounts/login/\?next=/runs/"))
    page.get_by_label("Username").fill("alice")
    page.get_by_label("Password").fill("not-her-password")
    page.get_by_role("button", name="Log in").click()
    expect(page.get_by_role("alert")).to_contain_text("do not match")
    ui.shot("login-error")

    page.get_by_label("Password").fill("alice-password-1")
    ui.follow(page.get_by_role("button", name="Log in"), "/runs/")
    expect(page.get_by_role("heading", name="Runs")).to_be_visible()  # back where she was going

    ui.follow(page.get_by_role("link", name="API token"), "/accounts/token/")
    token_field = page.get_by_label("API token", exact=True)
    expect(token_field).to_have_attribute("type", "password")
    page.get_by_role("button", name="Show", exact=True).click()
    expect(token_field).to_have_attribute("type", "text")
    expect(token_field).to_have_value(ui.service.account.token)
    ui.shot("token")

    page.once("dialog", lambda dialog: dialog.accept())
    page.get_by_role("button", name="Regenerate token").click()
    expect(page.get_by_text("A new token was created")).to_be_visible()
    new_token = page.get_by_label("API token", exact=True).input_value()
    assert new_token and new_token != ui.service.account.token
    assert ui.service.api("GET", "/api/runs").status_code == 401
    ui.service.account.token = new_token
    assert ui.service.api("GET", "/api/runs").status_code == 200

    page.get_by_role("button", name="Log out").click()
    expect(page.get_by_role("heading", name="Log in")).to_be_visible()
    page.goto(ui.url("/"))
    expect(page).to_have_url(re.compile(r"/accounts/login/"))
    ui.assert_no_console_errors()
