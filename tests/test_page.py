"""The page at / in a real browser: Debian's Chromium (`apt-get install chromium`), driven by Playwright
for Python (its own browser download cannot be reached here), against the real Serve app."""

import os
import shutil
from pathlib import Path

import pytest

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
SCREENSHOT_ENV = "PNEUMO_PAGE_SCREENSHOT"  # set to a path (docs/page.png) to keep the batch test's screenshot

if not Path(CHROMIUM).exists():
    pytest.skip(
        "browser tests need Chromium: apt-get install -y chromium (.ci/run installs it)", allow_module_level=True
    )
sync_api = pytest.importorskip("playwright.sync_api", reason="browser tests need playwright (pip install -e '.[dev]')")

pytestmark = pytest.mark.slow
ANSWER_TIMEOUT_MS = 60_000  # /explain on a busy 2-core machine


@pytest.fixture(scope="module")
def browser():
    with sync_api.sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        yield launched
        launched.close()


@pytest.fixture
def page(browser, serve_app):
    context = browser.new_context(viewport={"width": 1100, "height": 900})
    opened = context.new_page()
    errors: list[str] = []
    opened.on("pageerror", lambda error: errors.append(str(error)))
    offsite: list[str] = []
    opened.on(
        "request",
        lambda request: (
            offsite.append(request.url) if not request.url.startswith((serve_app.url, "data:", "blob:")) else None
        ),
    )
    opened.goto(f"{serve_app.url}/")
    sync_api.expect(opened.locator("#model")).to_contain_text("version 1", timeout=ANSWER_TIMEOUT_MS)
    yield opened
    assert errors == [], errors  # no script error
    assert offsite == [], offsite  # nothing fetched from anywhere else
    context.close()


@pytest.fixture(scope="module")
def films(synthetic_root) -> list[Path]:
    return (
        sorted((synthetic_root / "test" / "PNEUMONIA").glob("*.jpeg"))[:2]
        + sorted((synthetic_root / "test" / "NORMAL").glob("*.jpeg"))[:1]
    )


def test_upload_a_film_and_see_its_probability(page, films):
    sync_api.expect(page.get_by_role("note")).to_contain_text("Not for diagnostic use")
    page.get_by_label("Choose films…").set_input_files(str(films[0]))
    card = page.locator(".card").first
    sync_api.expect(card.locator(".verdict")).to_contain_text("P(pneumonia)", timeout=ANSWER_TIMEOUT_MS)
    sync_api.expect(card.locator(".verdict")).to_contain_text("threshold")
    assert card.locator(".verdict [class^=label-]").inner_text() in ("NORMAL", "PNEUMONIA")
    assert card.locator(".error").is_hidden()


def test_toggle_the_heatmap_and_change_its_opacity(page, films):
    page.get_by_label("Choose films…").set_input_files(str(films[0]))
    heat = page.locator(".card .heat")
    sync_api.expect(heat).to_be_visible(timeout=ANSWER_TIMEOUT_MS)
    toggle = page.get_by_label(f"Show heatmap for {films[0].name}")
    toggle.focus()
    page.keyboard.press("Space")  # keyboard only
    sync_api.expect(heat).to_be_hidden()
    toggle.check()
    sync_api.expect(heat).to_be_visible()
    page.get_by_label(f"Heatmap opacity for {films[0].name}").fill("20")
    assert heat.evaluate("element => element.style.opacity") == "0.2"


def test_garbage_gets_the_servers_error_in_plain_words(page, tmp_path):
    garbage = tmp_path / "notes.png"
    garbage.write_bytes(b"this is a shopping list, not a film" * 20)
    page.get_by_label("Choose films…").set_input_files(str(garbage))
    error = page.locator(".card .error")
    sync_api.expect(error).to_be_visible(timeout=ANSWER_TIMEOUT_MS)
    sync_api.expect(error).to_contain_text("could not be read as a chest film")
    sync_api.expect(error).to_contain_text("not a readable image")  # the server's own message
    assert "Traceback" not in page.content()
    assert page.locator(".card .verdict").inner_text() == "Not analysed."


def test_a_batch_of_three(page, films, tmp_path):
    page.get_by_label("Choose films…").set_input_files([str(film) for film in films])
    cards = page.locator(".card")
    sync_api.expect(cards).to_have_count(3)
    for i, film in enumerate(films):
        sync_api.expect(cards.nth(i).locator(".name")).to_have_text(film.name)
        sync_api.expect(cards.nth(i).locator(".verdict")).to_contain_text("P(pneumonia)", timeout=ANSWER_TIMEOUT_MS)
    page.screenshot(path=os.environ.get(SCREENSHOT_ENV, str(tmp_path / "page.png")), full_page=True)
