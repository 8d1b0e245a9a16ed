"""`cosal detect --preview`: a static index.html of the run, checked as HTML and in a real headless
browser (Debian's Chromium driven by Playwright): it loads with no console errors, fetches nothing
from the network, and shows every thumbnail."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from .test_detect import cosal, save

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def run_with_preview(tmp_path: Path, *extra: str) -> Path:
    for group, count in (("cats", 3), ("dogs <&>", 2)):  # a name that needs escaping in HTML and URLs
        for index in range(count):
            save(tmp_path / "in" / group / f"{index}.png", (60, 40), (40 * index + 80,) * 3)
    (tmp_path / "in" / "cats" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    out = tmp_path / "out"
    result = cosal("detect", str(tmp_path / "in"), "-m", "test-brightness", "-o", str(out), "--preview", *extra)
    assert result.exit_code == 1, result.output  # the broken image
    return out


def test_the_page_lists_groups_images_notes_and_failures_with_relative_links(fake_method, tmp_path):
    out = run_with_preview(tmp_path)
    page = (out / "index.html").read_text()
    assert page.count("<tr><td class='name'>") == 5 and page.count("<h2") == 2
    assert "dogs &lt;&amp;&gt;" in page and "broken.png" in page and "class='failure'" in page
    assert "http://" not in page and "https://" not in page and str(tmp_path) not in page.split("from ")[0]
    assert sorted(path.name for path in (out / "index_files" / "cats").iterdir())[:3] == [
        "0.map.png", "0.overlay.jpg", "0.photo.jpg"]  # fmt: skip
    # a resumed run: skipped images link the maps already there and their photos
    (out / "index.html").unlink()
    result = cosal("detect", str(tmp_path / "in"), "-m", "test-brightness", "-o", str(out), "--preview",
                   "--skip-existing")  # fmt: skip
    assert result.exit_code == 1
    assert (out / "index.html").read_text().count("<tr><td class='name'>") == 5


def open_in_browser(page_path: Path) -> tuple[list[str], list[str], int, int]:
    """Console errors, requested URLs, and loaded / total images of a page in headless Chromium."""
    playwright = pytest.importorskip("playwright.sync_api", reason="the dev extra installs playwright")
    if CHROMIUM is None:
        if os.environ.get("COSAL_REQUIRE_BROWSER"):
            pytest.fail("COSAL_REQUIRE_BROWSER is set but no chromium is installed (apt-get install chromium)")
        pytest.skip("no chromium here (Debian: apt-get install chromium; CI installs it)")
    errors, requests = [], []
    with playwright.sync_playwright() as driver:
        browser = driver.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        page = browser.new_page()
        page.on("console", lambda message: errors.append(message.text) if message.type == "error" else None)
        page.on("pageerror", lambda error: errors.append(str(error)))
        page.on("request", lambda request: requests.append(request.url))
        page.goto(page_path.as_uri(), wait_until="load")
        # the thumbnails load lazily (a long run's page would otherwise fetch every one at once): load them all
        page.evaluate("document.querySelectorAll('img').forEach(image => { image.loading = 'eager'; })")
        page.wait_for_function("[...document.images].every(image => image.complete)", timeout=15000)
        loaded = page.evaluate("[...document.images].filter(i => i.complete && i.naturalWidth > 0).length")
        total = page.evaluate("document.images.length")
        browser.close()
    return errors, requests, loaded, total


def test_the_page_loads_in_a_headless_browser_without_errors_or_network(fake_method, tmp_path):
    out = run_with_preview(tmp_path)
    errors, requests, loaded, total = open_in_browser(out / "index.html")
    assert errors == []
    assert all(url.startswith("file://") for url in requests), requests
    assert total == loaded == 5 * 3  # photo, map and overlay of each of the 5 images written


def test_the_bench_report_page_loads_in_a_headless_browser(tmp_path, monkeypatch):
    from .test_bench import bench_json, make_dataset, write_predictions

    monkeypatch.chdir(tmp_path)
    entries = make_dataset(tmp_path / "data", "canonical", {"a": 4, "b": 2})
    write_predictions(tmp_path / "one", entries, seed=1)
    bench_json("--data-root", tmp_path / "data", "-d", "Toy", "--pred", tmp_path / "one", "--report",
               tmp_path / "report")  # fmt: skip
    errors, requests, loaded, total = open_in_browser(tmp_path / "report" / "index.html")
    assert errors == [] and all(url.startswith("file://") for url in requests), (errors, requests)
    assert total == loaded == 1 + (3 + 2) * 3  # the curves; photo, ground truth, map of 3 + 2 worst images
