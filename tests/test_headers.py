"""Security headers: every page runs under a Content Security Policy with no inline script.

The client tests read each page's HTML for what the policy would refuse (inline script, event
handler attributes, style attributes, <style> blocks it does not list by hash); the browser
test loads each page in Chromium and listens for the violations the browser itself reports.
"""

from __future__ import annotations

import base64
import hashlib
import re
from collections.abc import Iterator
from html.parser import HTMLParser
from typing import Any

import pytest
from django.contrib import admin
from django.test import Client
from django.urls import reverse

from tests.browser import CHROMIUM, CHROMIUM_ARGS, requires_chromium
from tests.conftest import Account, make_account, queued_run
from transcription.models import TranscriptRun

CSP = "Content-Security-Policy"


def policy(response: Any) -> dict[str, list[str]]:
    """The Content-Security-Policy header as {directive: [sources]}."""
    directives: dict[str, list[str]] = {}
    for part in response[CSP].split(";"):
        name, *sources = part.split()
        directives[name] = sources
    return directives


class InlineCode(HTMLParser):
    """What a page carries inline: script bodies, handler and style attributes, style blocks."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=False)
        self.scripts: list[str] = []
        self.handlers: list[str] = []
        self.style_attributes: list[str] = []
        self.style_blocks: list[str] = []
        self._inside: str | None = None
        self._text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        names = dict(attrs)
        self.handlers += [f"{tag} {name}" for name, _ in attrs if name.startswith("on")]
        if "style" in names:
            self.style_attributes.append(f"<{tag} style={names['style']!r}>")
        if any((value or "").strip().lower().startswith("javascript:") for _, value in attrs):
            self.handlers.append(f"{tag} javascript: URL")
        # Data blocks (`type="application/json"`) are not run, so the policy leaves them be.
        runs = names.get("type") in (None, "", "text/javascript", "module")
        if tag == "script" and "src" not in names and runs:
            self._inside, self._text = "script", []
        elif tag == "style":
            self._inside, self._text = "style", []

    def handle_data(self, data: str) -> None:
        if self._inside:
            self._text.append(data)

    def handle_endtag(self, tag: str) -> None:
        if tag == self._inside == "script":
            self.scripts.append("".join(self._text))
        elif tag == self._inside == "style":
            self.style_blocks.append("".join(self._text))
        if tag == self._inside:
            self._inside = None


def inline_code(response: Any) -> InlineCode:
    parser = InlineCode()
    parser.feed(response.content.decode())
    return parser


def csp_hash(text: str) -> str:
    return "'sha256-" + base64.b64encode(hashlib.sha256(text.encode()).digest()).decode() + "'"


@pytest.fixture
def staff(db) -> Account:  # type: ignore[no-untyped-def]
    """A superuser: every admin page is open to them."""
    account = make_account("operator", staff=True)
    account.user.is_superuser = True  # type: ignore[attr-defined]
    account.user.save()  # type: ignore[attr-defined]
    return account


@pytest.fixture
def staff_client(staff) -> Client:  # type: ignore[no-untyped-def]
    client = Client()
    client.force_login(staff.user)  # type: ignore[arg-type]
    return client


@pytest.fixture
def a_run(staff) -> str:  # type: ignore[no-untyped-def]
    return str(queued_run(staff.client)["runId"])


def page_paths(run_id: str) -> Iterator[str]:
    """Every server-rendered page a person (staff) can open, admin lists and forms included."""
    yield from ["/", "/runs/", f"/runs/{run_id}/", "/accounts/token/", "/api/docs/", "/admin/"]
    yield reverse("admin:tasks_admin_queue_dashboard")
    for model in admin.site._registry:
        opts = model._meta
        yield reverse(f"admin:{opts.app_label}_{opts.model_name}_changelist")
    yield reverse("admin:auth_user_add")
    run = TranscriptRun.objects.get(pk=run_id)
    yield reverse("admin:transcription_transcriptrun_change", args=[run.pk])
    yield reverse("admin:tasks_admin_job_change", args=[run.jobs.get().pk])


def test_pages_and_api_answers_carry_the_security_headers(client, db):
    for path in ("/accounts/login/", "/api/docs/", "/api/runs", "/admin/login/"):
        response = client.get(path)
        assert response.status_code in (200, 401), path
        directives = policy(response)
        assert directives["script-src"] == ["'self'"], path
        assert directives["frame-ancestors"] == ["'none'"], path
        assert directives["object-src"] == ["'none'"], path
        assert "'unsafe-inline'" not in response[CSP] and "'unsafe-eval'" not in response[CSP]
        assert response["X-Content-Type-Options"] == "nosniff", path
        assert response["Referrer-Policy"] == "same-origin", path
        assert response["X-Frame-Options"] == "DENY", path


def test_no_page_has_inline_script_or_an_inline_style_the_policy_refuses(staff_client, a_run):
    for path in page_paths(a_run):
        response = staff_client.get(path)
        assert response.status_code == 200, path
        allowed_styles = policy(response)["style-src"]
        code = inline_code(response)
        assert code.scripts == [], path
        assert code.handlers == [], path
        assert code.style_attributes == [], path
        for block in code.style_blocks:
            assert csp_hash(block) in allowed_styles, (path, block)


def test_the_hashed_third_party_style_is_still_on_its_page(staff_client, settings):
    """Each hash in the policy belongs to a page that still has that <style> block: a stale
    hash would only widen the policy for nothing."""
    hashes = {
        source
        for source in settings.CONTENT_SECURITY_POLICY["DIRECTIVES"]["style-src"]
        if source.startswith("'sha256-")
    }
    found = {csp_hash(block) for block in inline_code(staff_client.get("/api/docs/")).style_blocks}
    assert hashes == found


def test_the_api_docs_load_their_start_up_script_as_a_file_and_never_call_the_validator(client):
    page = client.get("/api/docs/").content.decode()
    script = re.search(r'<script src="([^"]*script=[^"]*)"', page)
    assert script, page

    response = client.get(script.group(1).replace("&amp;", "&"))

    assert response.status_code == 200
    assert response["Content-Type"].startswith("application/javascript")
    assert "SwaggerUIBundle" in response.content.decode()
    assert '"validatorUrl": null' in response.content.decode()


@pytest.mark.django_db
def test_the_progress_bar_width_comes_from_the_script_not_a_style_attribute(staff_client, a_run):
    page = staff_client.get(f"/runs/{a_run}/").content.decode()
    bar = re.search(r'<div class="bar" id="run-bar"[^>]*>.*?</div>', page, re.S)
    assert bar and 'aria-valuenow="0.0"' in bar.group(0)
    assert "style=" not in bar.group(0)


# --- In a real browser ----------------------------------------------------------------------

# Collects what the browser reports, whether or not it also reaches the console.
LISTEN_FOR_VIOLATIONS = """
window.__violations = [];
document.addEventListener("securitypolicyviolation", event => window.__violations.push(
    event.violatedDirective + " " + (event.blockedURI || "inline") + " " + event.sourceFile
));
"""


@requires_chromium
@pytest.mark.slow
def test_every_page_works_in_chromium_without_a_policy_violation(processes, collected_static):
    from playwright.sync_api import expect, sync_playwright

    # The ORM before the browser starts (see tests/test_ui.py's docstring).
    operator = make_account("operator", staff=True)
    operator.user.is_superuser = True  # type: ignore[attr-defined]
    operator.user.save()  # type: ignore[attr-defined]
    (processes.data_dir / "staticfiles").symlink_to(collected_static, target_is_directory=True)
    base = processes.web(LOGIN_FAILURE_LIMIT="2")
    run_id = queued_run(operator.client)["runId"]
    # Half-way, so that the page has a bar to draw.
    TranscriptRun.objects.filter(pk=run_id).update(status="processing", progress=50)
    paths = list(page_paths(run_id))

    errors: list[str] = []
    playwright = sync_playwright().start()
    try:
        browser = playwright.chromium.launch(
            executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS
        )
        page = browser.new_page()
        page.set_default_timeout(15_000)
        page.add_init_script(LISTEN_FOR_VIOLATIONS)
        page.on("console", lambda m: m.type == "error" and errors.append(f"{m.text} {m.location}"))
        page.on("pageerror", lambda exc: errors.append(f"uncaught: {exc}"))
        page.on(
            "response",
            lambda r: r.status >= 400 and errors.append(f"{r.status} {r.url} (on {page.url})"),
        )

        def violations() -> list[str]:
            return list(page.evaluate("window.__violations"))

        page.goto(f"{base}/accounts/login/")
        assert violations() == []
        page.get_by_label("Username").fill("operator")
        page.get_by_label("Password").fill("operator-password-1")
        page.get_by_role("button", name="Log in").click()
        page.get_by_role("heading", name="Transcribe audio").wait_for()

        for path in paths:
            page.goto(base + path, wait_until="load")
            if path == "/api/docs/":
                # Swagger UI draws the operations from the schema after the page loads.
                expect(page.locator(".opblock").first).to_be_visible()
            if path == f"/runs/{run_id}/":
                fill = page.locator("#run-bar .bar-fill")
                expect(fill).to_have_attribute("style", re.compile(r"width: 50%"))
                # Drawn half full, once the bar's width transition is over.
                page.wait_for_function(
                    """() => {
                        const bar = document.getElementById("run-bar").getBoundingClientRect();
                        const fill = bar && document.querySelector("#run-bar .bar-fill");
                        const ratio = fill.getBoundingClientRect().width / bar.width;
                        return ratio > 0.49 && ratio < 0.51;
                    }"""
                )
            assert violations() == [], path
        # Django's admin names no icon, so Chromium asks for /favicon.ico: not ours to fix.
        assert [e for e in errors if "/favicon.ico" not in e] == []

        # The page a locked-out login lands on obeys the policy too.
        page.get_by_role("button", name="Log out").click()
        for _ in range(2):
            page.get_by_label("Username").fill("operator")
            page.get_by_label("Password").fill("a wrong guess")
            page.get_by_role("button", name="Log in").click()
        expect(page.get_by_role("heading", name="Too many attempts")).to_be_visible()
        expect(page.get_by_role("alert")).to_contain_text("wait 15 minutes")
        assert violations() == []
        browser.close()
    finally:
        playwright.stop()
