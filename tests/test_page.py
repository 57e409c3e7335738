"""The page at / in a real browser: Debian's Chromium (`apt-get install chromium`), driven by Playwright
for Python (its own browser download cannot be reached here), against the real Serve app, and against
one beside it with serve.ood_policy=reject for the films the gate refuses."""

import os
import shutil
from pathlib import Path

import numpy as np
import pydicom
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
REFUSED_SENTENCE = "This image does not look like a chest film the model knows, so it was not scored."
# the reject app takes the real chest CR (RG1_J2KI: 677 kB, 1841x1955) that the session's tight limits refuse
REJECT_OVERRIDES = ("serve.ood_policy=reject", "serve.max_body_bytes=8000000", "serve.max_image_pixels=4000000")


@pytest.fixture(scope="module")
def browser():
    with sync_api.sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        yield launched
        launched.close()


def _open(browser, url: str, version: str):
    """A page at `url`/ once its model is shown; yields it, then checks it raised no script error and
    fetched nothing from anywhere else."""
    context = browser.new_context(viewport={"width": 1100, "height": 900})
    opened = context.new_page()
    errors: list[str] = []
    opened.on("pageerror", lambda error: errors.append(str(error)))
    offsite: list[str] = []
    opened.on(
        "request",
        lambda request: offsite.append(request.url) if not request.url.startswith((url, "data:", "blob:")) else None,
    )
    opened.goto(f"{url}/")
    sync_api.expect(opened.locator("#model")).to_contain_text(f"version {version}", timeout=ANSWER_TIMEOUT_MS)
    yield opened
    assert errors == [], errors  # no script error
    assert offsite == [], offsite  # nothing fetched from anywhere else
    context.close()


@pytest.fixture
def page(browser, serve_app):
    yield from _open(browser, serve_app.url, "1")


@pytest.fixture(scope="module")
def reject_url(serve_app):
    from tests.serve_deploy import deployed

    with deployed(serve_app, "page-reject", serve_app.checkpoint, *REJECT_OVERRIDES) as url:
        yield url


@pytest.fixture
def reject_page(browser, reject_url):
    yield from _open(browser, reject_url, "local")  # the checkpoint folder itself, not a registry version


def _pictured(card) -> bool:
    """The card shows a picture of its film (the browser's own, or the server's copy)."""
    return card.locator(".film").evaluate("film => !film.hidden && film.complete && film.naturalWidth > 0")


def _dicom_file(tmp_path: Path, name: str, dataset: pydicom.Dataset) -> Path:
    from pneumo.pacs.sr import part10_bytes

    (tmp_path / name).write_bytes(part10_bytes(dataset))
    return tmp_path / name


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
    sync_api.expect(error.locator(".sentence")).to_have_text("This file could not be read as a chest film.")
    detail = error.locator(".detail")
    sync_api.expect(detail).to_be_hidden()  # the server's own message, one click away
    error.get_by_text("Details").click()
    sync_api.expect(detail).to_contain_text("not a readable image")
    assert "Traceback" not in page.content()
    card = page.locator(".card")
    assert card.locator(".verdict").inner_text() == "Not analysed."
    sync_api.expect(card.locator(".no-picture")).to_be_visible()  # nothing to draw, and it says so
    sync_api.expect(card.locator(".controls")).to_be_hidden()


def test_a_batch_of_three(page, films, tmp_path):
    page.get_by_label("Choose films…").set_input_files([str(film) for film in films])
    cards = page.locator(".card")
    sync_api.expect(cards).to_have_count(3)
    for i, film in enumerate(films):
        sync_api.expect(cards.nth(i).locator(".name")).to_have_text(film.name)
        sync_api.expect(cards.nth(i).locator(".verdict")).to_contain_text("P(pneumonia)", timeout=ANSWER_TIMEOUT_MS)
    page.screenshot(path=os.environ.get(SCREENSHOT_ENV, str(tmp_path / "page.png")), full_page=True)


def test_a_dicom_film_shows_the_servers_picture_and_its_view(page, tmp_path):
    from tests.pacs.films import made_film

    page.get_by_label("Choose films…").set_input_files(str(_dicom_file(tmp_path, "film.dcm", made_film())))
    card = page.locator(".card")
    sync_api.expect(card.locator(".verdict")).to_contain_text("P(pneumonia)", timeout=ANSWER_TIMEOUT_MS)
    sync_api.expect(card.locator(".facts")).to_have_text("DICOM DX, PA, CHEST")
    assert _pictured(card)  # a browser cannot draw DICOM: the server's copy
    sync_api.expect(card.locator(".controls")).to_be_visible()


def test_every_film_is_drawn_a_refusal_is_one_sentence_and_only_working_controls_show(reject_page, tmp_path):
    from bench.non_chest import scenes

    ct = _dicom_file(tmp_path, "ct.dcm", pydicom.dcmread(pydicom.data.get_testdata_file("CT_small.dcm")))
    chest = pydicom.data.get_testdata_file("RG1_J2KI.dcm")  # the real chest CR (pydicom-data)
    photo = tmp_path / "photo.jpeg"
    photo.write_bytes(next(iter(scenes(np.random.default_rng(0), 1).values())))
    files = [str(ct), *([chest] if chest else []), str(photo)]
    reject_page.get_by_label("Choose films…").set_input_files(files)
    cards = reject_page.locator(".card")
    sync_api.expect(cards).to_have_count(len(files))
    for i in range(len(files)):
        sync_api.expect(cards.nth(i).locator(".verdict")).not_to_have_text("Analysing…", timeout=ANSWER_TIMEOUT_MS)
        assert _pictured(cards.nth(i)), files[i]  # refused or not, every film the server decoded is drawn
        if cards.nth(i).locator(".error").is_visible():
            sync_api.expect(cards.nth(i).locator(".controls")).to_be_hidden()  # no map: no switch, no slider

    refused = cards.nth(0)  # the CT slice
    error = refused.locator(".error")
    shown = [line for line in error.inner_text().splitlines() if line.strip()]
    assert shown == [REFUSED_SENTENCE, "Details"]  # one sentence, said once; the rest one click away
    sync_api.expect(refused.locator(".facts")).to_have_text("DICOM CT")
    error.get_by_text("Details").click()
    sync_api.expect(error.locator(".detail")).to_contain_text("out-of-distribution score")
    assert "serve.ood_policy" not in error.locator(".sentence").inner_text()
    if chest:
        sync_api.expect(cards.nth(1).locator(".facts")).to_have_text("DICOM CR, PA, CHEST")
