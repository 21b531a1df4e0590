"""Debian's chromium, headless, driven through Debian's chromium-driver by selenium, for the web tests.

Flags: the ones this closed network needs (no background connections, a fresh profile); the shop's TLS key
is pinned by its SPKI hash (``--ignore-certificate-errors-spki-list``: only that key is accepted besides
the browser's own roots, so the demo CA's certificate works without trusting anything else); ``rebind.test``
resolves to loopback, for the DNS rebinding test. Every wait is bounded; screenshots go to the test's tmp
folder and their paths to the test's report (``record_property``), which conftest prints at the end.
"""
from __future__ import annotations

import base64
import hashlib
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

CHROMIUM = "/usr/bin/chromium"
DRIVER = "/usr/bin/chromedriver"
WAIT = 30.0
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-dev-shm-usage", "--window-size=1000,1200")


def spki_hash(cert_pem: Path) -> str:
    cert = x509.load_pem_x509_certificates(cert_pem.read_bytes())[0]
    der = cert.public_key().public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
    return base64.b64encode(hashlib.sha256(der).digest()).decode()


def need_browser() -> None:
    if not (Path(CHROMIUM).exists() and Path(DRIVER).exists()):
        pytest.skip("Debian's chromium and chromium-driver are not installed (make test installs them)")


@contextmanager
def chromium(pinned: list[str]) -> Iterator[Any]:
    need_browser()
    import os

    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    os.environ.setdefault("SE_OFFLINE", "true")           # selenium must not look for drivers on the network
    profile = tempfile.mkdtemp(prefix="semper-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={profile}")
    options.add_argument("--ignore-certificate-errors-spki-list=" + ",".join(pinned))
    options.add_argument("--host-resolver-rules=MAP rebind.test 127.0.0.1")
    driver = webdriver.Chrome(options=options, service=Service(DRIVER))
    driver.set_page_load_timeout(WAIT)
    driver.set_script_timeout(WAIT)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


def wait_for(driver: Any, condition: Callable[[Any], Any], what: str, timeout: float = WAIT) -> Any:
    from selenium.common.exceptions import TimeoutException
    from selenium.webdriver.support.ui import WebDriverWait
    try:
        return WebDriverWait(driver, timeout, poll_frequency=0.2).until(condition)
    except TimeoutException:
        raise AssertionError(f"waited {timeout:.0f} s for {what}; the page shows: "
                             f"{driver.find_element('tag name', 'body').text[:1500]!r}") from None


class Shots:
    """Screenshots of one test, in its tmp folder; each path goes to the test's report."""

    def __init__(self, folder: Path, record: Callable[[str, object], None]) -> None:
        self.folder = folder
        self.record = record
        self.paths: list[Path] = []

    def take(self, driver: Any, name: str) -> Path:
        path = self.folder / f"{len(self.paths) + 1:02d}-{name}.png"
        assert driver.save_screenshot(str(path)), f"no screenshot {path}"
        assert path.stat().st_size > 2_000 and path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        self.paths.append(path)
        self.record("screenshot", str(path))
        return path

    def saw(self, text: str) -> None:
        """What a (hostile) page or the TINGUIN saw, for the run's summary."""
        print(text)
        self.record("saw", " ".join(text.split())[:600])
