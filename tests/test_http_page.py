"""The translation page in real headless Chromium (Debian's chromium + chromedriver via selenium),
served by a real ``FerryServer`` with the tiny models: type, translate (button and Ctrl+Enter), read
the result, count characters, swap languages, detected language with "auto", an error message, and
a phone-width layout. Screenshots go to the test's tmp dir."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
from ferry.server.registry import ModelRegistry
from ferry.server.servicer import RequestLimits
from http_support import chromium_paths, copy_model, headless_chromium, serve_http

import ferry.text.detect

# Skipped on a developer machine without the browser; in CI (.ci/run installs it) a missing browser fails.
pytestmark = pytest.mark.skipif(
    chromium_paths() is None and not os.environ.get("CI"),
    reason="needs chromium and chromedriver (apt-get install chromium chromium-driver)",
)
selenium = pytest.importorskip("selenium")

from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.common.keys import Keys  # noqa: E402
from selenium.webdriver.support.select import Select  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

LIMITS = RequestLimits(max_text_chars=200)


@pytest.fixture(scope="module")
def base(tiny_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    reverse = copy_model(
        tiny_checkpoint,
        tmp_path_factory.mktemp("rev") / "model",
        model_id="tiny-rev",
        source_language="yy",
        target_language="xx",
    )
    registry = ModelRegistry.load([tiny_checkpoint, reverse], device="cpu")
    with serve_http(registry, limits=LIMITS) as (_, url):
        yield url


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    driver = headless_chromium(tmp_path_factory.mktemp("chromium-profile"))
    try:
        yield driver
    finally:
        driver.quit()


def wait(driver: Any, condition: Callable[[Any], Any], timeout: float = 60) -> Any:
    return WebDriverWait(driver, timeout).until(condition)


def open_page(driver: Any, base: str) -> None:
    driver.get(f"{base}/")
    wait(driver, lambda d: len(Select(d.find_element(By.ID, "target")).options) > 0)


def text_of(driver: Any, element_id: str) -> str:
    return str(driver.find_element(By.ID, element_id).text)


def type_text(driver: Any, text: str) -> None:
    q = driver.find_element(By.ID, "q")
    q.clear()
    q.send_keys(text)


def translate_and_read(driver: Any, previous: str = "") -> str:
    driver.find_element(By.ID, "translate").click()
    return str(wait(driver, lambda d: (t := text_of(d, "translation")) and t != previous and t))


def test_type_translate_and_read(browser: Any, base: str, tiny_pairs: list, tmp_path: Path) -> None:
    open_page(browser, base)
    source, target = Select(browser.find_element(By.ID, "source")), Select(browser.find_element(By.ID, "target"))
    assert [o.get_attribute("value") for o in source.options] == ["auto", "xx", "yy"]
    assert source.first_selected_option.get_attribute("value") == "xx"
    assert [o.get_attribute("value") for o in target.options] == ["yy"]
    src, tgt = tiny_pairs[0]
    type_text(browser, src)
    assert text_of(browser, "count") == f"{len(src)} / 200"
    assert translate_and_read(browser) == tgt
    assert browser.find_element(By.ID, "error").is_displayed() is False
    assert browser.find_element(By.ID, "copy").is_enabled()
    browser.save_screenshot(str(tmp_path / "translated.png"))

    # Ctrl+Enter translates too.
    src2, tgt2 = tiny_pairs[1]
    type_text(browser, src2)
    browser.find_element(By.ID, "q").send_keys(Keys.CONTROL, Keys.ENTER)
    assert wait(browser, lambda d: text_of(d, "translation") == tgt2)


def test_swap_languages_when_the_reverse_is_hosted(browser: Any, base: str, tiny_pairs: list) -> None:
    open_page(browser, base)
    src, tgt = tiny_pairs[2]
    type_text(browser, src)
    assert translate_and_read(browser) == tgt
    swap = browser.find_element(By.ID, "swap")
    assert swap.is_enabled()
    swap.click()
    assert Select(browser.find_element(By.ID, "source")).first_selected_option.get_attribute("value") == "yy"
    assert Select(browser.find_element(By.ID, "target")).first_selected_option.get_attribute("value") == "xx"
    assert browser.find_element(By.ID, "q").get_attribute("value") == tgt  # the translation became the input
    Select(browser.find_element(By.ID, "source")).select_by_value("auto")
    assert not swap.is_enabled()  # nothing to swap with "auto"


def test_error_is_shown_and_cleared(browser: Any, base: str, tiny_pairs: list, tmp_path: Path) -> None:
    open_page(browser, base)
    type_text(browser, "a " * 99)  # under the 200-character limit, over the tiny model's 64 tokens
    browser.find_element(By.ID, "translate").click()
    error = wait(browser, lambda d: d.find_element(By.ID, "error").is_displayed() and d.find_element(By.ID, "error"))
    assert "the limit is 64 tokens per text" in error.text
    browser.save_screenshot(str(tmp_path / "error.png"))
    type_text(browser, "a " * 101)  # over the character limit: the count says so
    assert "over" in browser.find_element(By.ID, "count").get_attribute("class")
    src, tgt = tiny_pairs[3]
    type_text(browser, src)
    assert translate_and_read(browser) == tgt
    assert not browser.find_element(By.ID, "error").is_displayed()


def test_auto_shows_the_detected_language(
    browser: Any, base: str, tiny_pairs: list, monkeypatch: pytest.MonkeyPatch
) -> None:
    src, tgt = tiny_pairs[4]

    def detect(texts: Sequence[str], **_: object) -> list[list[tuple[str, float]]]:
        return [[("xx", 0.9)] for _ in texts]

    monkeypatch.setattr(ferry.text.detect, "detect", detect)
    open_page(browser, base)
    Select(browser.find_element(By.ID, "source")).select_by_value("auto")
    type_text(browser, src)
    assert translate_and_read(browser) == tgt
    assert wait(browser, lambda d: text_of(d, "detected") == "Detected: xx (90%)")


def test_phone_width_is_one_column_without_sideways_scrolling(browser: Any, base: str, tmp_path: Path) -> None:
    browser.set_window_size(390, 844)
    try:
        open_page(browser, base)
        width = browser.execute_script("return document.documentElement.clientWidth")
        scroll = browser.execute_script("return document.documentElement.scrollWidth")
        assert scroll <= width
        q, out = browser.find_element(By.ID, "q"), browser.find_element(By.ID, "translation")
        assert out.location["y"] > q.location["y"] + q.size["height"] - 1  # stacked, not side by side
        assert browser.find_element(By.ID, "translate").size["width"] > 0.8 * width
        browser.save_screenshot(str(tmp_path / "phone.png"))
    finally:
        browser.set_window_size(1100, 760)


def test_the_key_field_when_the_server_requires_one(
    browser: Any, tiny_checkpoint: Path, tiny_pairs: list, tmp_path: Path
) -> None:
    registry = ModelRegistry.load([tiny_checkpoint], device="cpu")
    with serve_http(registry, auth_token="page-key") as (_, url):
        open_page(browser, url)
        key = browser.find_element(By.ID, "api_key")
        assert key.is_displayed()
        src, tgt = tiny_pairs[5]
        type_text(browser, src)
        browser.find_element(By.ID, "translate").click()
        error = wait(
            browser, lambda d: d.find_element(By.ID, "error").is_displayed() and d.find_element(By.ID, "error")
        )
        assert "this server requires an API key" in error.text
        key.send_keys("page-key")
        assert translate_and_read(browser) == tgt
        assert not browser.find_element(By.ID, "error").is_displayed()
