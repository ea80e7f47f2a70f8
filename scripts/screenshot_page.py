"""Take docs/img/web-page.png: the web page of ``ferry serve`` with the default model, in headless
Chromium, after translating an English sentence with
the source language detected. Needs Debian's chromium and chromium-driver.

    .venv/bin/python scripts/screenshot_page.py [--out docs/img/web-page.png] [--text "..."]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))  # http_support: the browser launcher the tests use

TEXT = "Two young children are playing with a ball in the park."


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=ROOT / "docs" / "img" / "web-page.png")
    p.add_argument("--text", default=TEXT)
    p.add_argument("--width", type=int, default=1000)
    p.add_argument("--height", type=int, default=680)
    args = p.parse_args()

    from ferry.server.registry import ModelRegistry
    from http_support import headless_chromium, serve_http
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.select import Select
    from selenium.webdriver.support.ui import WebDriverWait

    from ferry import default_model_dirs

    registry = ModelRegistry.load(default_model_dirs(), device="cpu")
    with serve_http(registry) as (_, base), tempfile.TemporaryDirectory() as profile:
        driver = headless_chromium(Path(profile), args.width, args.height)
        try:
            driver.get(f"{base}/")
            wait = WebDriverWait(driver, 120)
            wait.until(lambda d: len(Select(d.find_element(By.ID, "target")).options) > 0)
            Select(driver.find_element(By.ID, "source")).select_by_value("auto")  # shows the detected language
            driver.find_element(By.ID, "q").send_keys(args.text)
            driver.find_element(By.ID, "translate").click()
            wait.until(lambda d: d.find_element(By.ID, "translation").text)
            args.out.parent.mkdir(parents=True, exist_ok=True)
            driver.save_screenshot(str(args.out))
            print(f"{args.out}: {driver.find_element(By.ID, 'translation').text}")
        finally:
            driver.quit()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
