"""Helpers for the HTTP API tests (imported as ``http_support``; pytest puts tests/ on sys.path)."""

from __future__ import annotations

import json
import shutil
import ssl
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ferry.server.app import ServerConfig, ServerThread
from ferry.server.registry import ModelRegistry


@dataclass
class Reply:
    status: int
    body: Any
    headers: dict[str, str]


@contextmanager
def serve_http(registry: ModelRegistry, **config: Any) -> Iterator[tuple[ServerThread, str]]:
    """A FerryServer with HTTP on a free loopback port; yields the thread and the base URL."""
    cfg = ServerConfig(host="127.0.0.1", port=0, http_port=0, **config)
    scheme = "https" if cfg.tls_cert else "http"
    with ServerThread(registry, cfg) as thread:
        assert thread.server is not None
        yield thread, f"{scheme}://127.0.0.1:{thread.server.http_port}"


def call(
    url: str,
    body: Any = None,
    *,
    form: dict[str, Any] | None = None,
    raw: bytes | None = None,
    headers: dict[str, str] | None = None,
    method: str | None = None,
    context: ssl.SSLContext | None = None,
) -> Reply:
    """One request: JSON ``body``, URL-encoded ``form`` or ``raw`` bytes; the reply's JSON body
    (or text when it is not JSON), whatever the status."""
    from urllib.parse import urlencode

    data, hdrs = None, dict(headers or {})
    if body is not None:
        data = json.dumps(body).encode()
        hdrs.setdefault("Content-Type", "application/json")
    elif form is not None:
        data = urlencode(form, doseq=True).encode()
        hdrs.setdefault("Content-Type", "application/x-www-form-urlencoded")
    elif raw is not None:
        data = raw
    request = urllib.request.Request(url, data=data, headers=hdrs, method=method)
    try:
        with urllib.request.urlopen(request, timeout=60, context=context) as reply:
            status, payload, out_headers = reply.status, reply.read(), dict(reply.headers)
    except urllib.error.HTTPError as err:
        status, payload, out_headers = err.code, err.read(), dict(err.headers)
    try:
        parsed: Any = json.loads(payload)
    except ValueError:
        parsed = payload.decode("utf-8", "replace")
    return Reply(status, parsed, out_headers)


def copy_model(src: Path, dst: Path, **meta: str) -> Path:
    """``src`` copied to ``dst`` with ``config.json`` fields replaced (model_id, languages, version)."""
    shutil.copytree(src, dst)
    config = json.loads((dst / "config.json").read_text())
    config.update(meta)
    (dst / "config.json").write_text(json.dumps(config))
    return dst


CHROMIUM_FLAGS = (
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    # The closed network refuses background connections: make none.
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-extensions",
    "--disable-default-apps",
)


def chromium_paths() -> tuple[str, str] | None:
    """(browser, driver) from Debian's chromium and chromium-driver packages, or None."""
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    return (browser, driver) if browser and driver else None


def headless_chromium(profile: Path, width: int = 1100, height: int = 760) -> Any:
    """A selenium WebDriver for headless Chromium with a fresh profile in ``profile``."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    paths = chromium_paths()
    assert paths is not None, "chromium and chromedriver are not installed (apt-get install chromium chromium-driver)"
    options = webdriver.ChromeOptions()
    options.binary_location = paths[0]
    for flag in CHROMIUM_FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={profile}")
    options.add_argument(f"--window-size={width},{height}")
    return webdriver.Chrome(options=options, service=Service(executable_path=paths[1]))
