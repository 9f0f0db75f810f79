"""Browser tests' shared parts: Debian's Chromium driven by Playwright, a page on real web and
worker processes (the `ui` fixture), and the accessibility check every page must pass.

Playwright's sync API keeps an event loop running in the test's thread, and Django refuses ORM
calls while one runs: so accounts are made before the browser starts, and the tests check the
outcome through the HTTP API, as any client would.

The fixtures are registered for every test module by `pytest_plugins` in tests/conftest.py.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import ROOT, Service

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
requires_chromium = pytest.mark.skipif(
    not CHROMIUM.exists(),
    reason="the browser tests need Chromium at /usr/bin/chromium (apt-get install chromium)",
)
SCREENSHOTS = ROOT / "test-artifacts" / "screenshots"
DOCS = ROOT / "docs"


@pytest.fixture(scope="session")
def collected_static(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Static files collected once: a web process run with DEBUG off, as in production, serves
    only what collectstatic gathered (servestatic)."""
    data_dir = tmp_path_factory.mktemp("static-data")
    subprocess.run(
        [sys.executable, "manage.py", "collectstatic", "--noinput", "--verbosity", "0"],
        cwd=ROOT,
        env={**os.environ, "DATA_DIR": str(data_dir), "DEBUG": "1"},
        check=True,
        timeout=300,
    )
    return data_dir / "staticfiles"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Every test on a browser page (it uses `ui`, or the static files a browser needs) is
    marked `browser`: `-m "not browser"` leaves them out."""
    for item in items:
        if {"ui", "collected_static"} & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.browser)


@dataclass
class UI:
    """A browser page on the service, and the service's API beside it to check what it shows."""

    service: Service
    page: Any
    name: str
    errors: list[str] = field(default_factory=list)
    allowed: list[re.Pattern[str]] = field(default_factory=list)

    def url(self, path: str) -> str:
        return self.service.web_url + path

    def login(self) -> None:
        username = self.service.account.user.get_username()  # type: ignore[attr-defined]
        self.page.goto(self.url("/"))
        self.page.get_by_label("Username").fill(username)
        self.page.get_by_label("Password").fill(f"{username}-password-1")
        self.follow(self.page.get_by_role("button", name="Log in"), "/")
        self.page.get_by_role("heading", name="Transcribe audio").wait_for()

    def follow(self, target: Any, path: str) -> None:
        """Click something that loads another page, and wait until that page has run its
        scripts: elements are visible before the scripts at the end of the page are."""
        target.click()
        self.page.wait_for_url(re.compile(re.escape(self.url(path)) + r"$"), wait_until="load")

    def allow_console_error(self, pattern: str) -> None:
        self.allowed.append(re.compile(pattern))

    def shot(self, label: str, *, docs: str | None = None) -> None:
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        self.page.screenshot(path=SCREENSHOTS / f"{self.name}-{label}.png", full_page=True)
        # The README's pictures are written when missing or asked for, not on every run: a
        # test run should not leave changed images in the working tree.
        if docs and (not (DOCS / docs).exists() or os.environ.get("UPDATE_DOCS_SCREENSHOTS")):
            DOCS.mkdir(exist_ok=True)
            self.page.screenshot(path=DOCS / docs, full_page=True)

    def mark_page(self) -> None:
        """A flag on the current document: it survives everything but a reload."""
        self.page.evaluate("window.__notReloaded = true")

    def assert_not_reloaded(self) -> None:
        assert self.page.evaluate("window.__notReloaded === true"), "the page was reloaded"

    def assert_no_console_errors(self) -> None:
        unexpected = [e for e in self.errors if not any(p.search(e) for p in self.allowed)]
        assert not unexpected, f"errors in the browser console: {unexpected}"


@pytest.fixture
def web_env() -> dict[str, str]:
    return {}


@pytest.fixture
def ui(service, collected_static, web_env, request) -> Iterator[UI]:  # type: ignore[no-untyped-def]
    """The service (its account made before the browser: see the module docstring) and a
    browser page on it."""
    from playwright.sync_api import sync_playwright

    data_dir = service.processes.data_dir
    (data_dir / "staticfiles").symlink_to(collected_static, target_is_directory=True)
    service.start_web(**web_env)

    playwright = sync_playwright().start()
    try:
        browser = playwright.chromium.launch(
            executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS
        )
        context = browser.new_context(viewport={"width": 1200, "height": 860})
        context.set_default_timeout(15_000)
        page = context.new_page()
        state = UI(service, page, request.node.name)
        page.on("console", lambda m: m.type == "error" and state.errors.append(m.text))
        page.on("pageerror", lambda exc: state.errors.append(f"uncaught: {exc}"))
        yield state
        context.close()
        browser.close()
    finally:
        playwright.stop()


def upload_item(ui: UI, filename: str) -> Any:
    return ui.page.locator("li.upload", has=ui.page.locator(".upload-name", has_text=filename))


def no_horizontal_scroll(ui: UI) -> bool:
    return bool(ui.page.evaluate("document.documentElement.scrollWidth <= window.innerWidth"))


# --- Accessibility --------------------------------------------------------------------------

# axe-core, vendored (tests/vendor/axe-core, MPL-2.0, from the npm registry): no CDN at test time.
AXE = Path(__file__).parent / "vendor" / "axe-core" / "axe.min.js"
SERIOUS = ("serious", "critical")


def axe_violations(ui: UI, *, impacts: tuple[str, ...] = SERIOUS) -> list[dict[str, Any]]:
    """axe-core's violations of the current page (WCAG 2.x A and AA, and best practices) with
    one of `impacts`, each as {id, impact, help, nodes: [css target, ...]}."""
    if not ui.page.evaluate("typeof window.axe !== 'undefined'"):
        # Evaluated, not added as a <script>: the pages' Content-Security-Policy refuses
        # inline scripts, and Playwright's evaluation is not subject to it.
        ui.page.evaluate(AXE.read_text())
    found = ui.page.evaluate(
        """async () => {
            const result = await axe.run(document, {
                runOnly: {type: "tag", values: [
                    "wcag2a", "wcag2aa", "wcag21a", "wcag21aa", "wcag22aa", "best-practice"
                ]},
            });
            return result.violations.map(v => ({
                id: v.id, impact: v.impact, help: v.help,
                nodes: v.nodes.map(n => n.target.join(" ")),
            }));
        }"""
    )
    return [v for v in found if v["impact"] in impacts]


def assert_accessible(ui: UI) -> None:
    """No serious or critical axe-core violation on the page as it is now."""
    violations = axe_violations(ui)
    assert not violations, "axe-core found:\n" + json.dumps(violations, indent=2)


def tab_to(ui: UI, selector: str, *, limit: int = 60) -> None:
    """Press Tab until the element matching `selector` has the focus, as a keyboard user would
    reach it; fails when it is never reached."""
    for _ in range(limit):
        ui.page.keyboard.press("Tab")
        if ui.page.evaluate(
            """s => {
                const el = document.querySelector(s);
                return !!el && el.contains(document.activeElement);
            }""",
            selector,
        ):
            return
    raise AssertionError(f"{selector} is not reachable with Tab ({limit} presses)")
