"""The gateway's demo page in a real headless Chromium (Debian's chromium + chromedriver).

The whole path is live: the page uploads through the gateway, the consumers (clip,
labels, caption on tiny random weights, face on dlib's real ones) answer through Tansu,
moto and milvus-lite, and the page draws the results; then it searches by text, shows
the people found and names one. The test saves a screenshot.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from consumers.config.settings import (
    CaptionSettings,
    ClipSettings,
    FaceSettings,
    GatewaySettings,
    LabelsSettings,
    PeopleSettings,
    S3Settings,
    Settings,
)
from consumers.devstack.launcher import running_consumers
from consumers.devstack.servers import Broker
from consumers.gateway.api_keys import AuthSettings, Scope, new_key
from consumers.gateway.server import running_gateway
from tests.face_support import two_face_photo
from tests.helpers import jpeg
from tests.stack_settings import stack_settings

pytestmark = pytest.mark.integration
CHROMIUM, CHROMEDRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")
TASKS = ["clip", "labels", "caption", "face"]  # all enabled: the page asks for every one
# Where the screenshot is kept after the run (pytest's tmp folders are pruned).
# The page asks for a key; this one holds the tenant its uploads and searches stay in.
KEY, RECORD = new_key(["demo"], [Scope.INGEST, Scope.SEARCH, Scope.FACES])
SCREENSHOT = Path(os.environ.get("IMAGESTREAM_SCREENSHOT_DIR", "build/screenshots")) / "demo.png"


@pytest.fixture
async def settings(
    kafka_broker: Broker, s3_server: S3Settings, tmp_path_factory: pytest.TempPathFactory
) -> Settings:
    root = tmp_path_factory.mktemp("demo")
    tiny = {"model": "random:tiny", "device": "cpu", "batch_timeout_ms": 50}
    return await stack_settings(
        kafka_broker.bootstrap_servers,
        s3_server,
        root,
        root / "models",
        gateway=GatewaySettings(
            port=0, request_timeout_s=60, auth=AuthSettings(keys=[RECORD], keys_file=None)
        ),
        clip=ClipSettings(**tiny),
        labels=LabelsSettings(enabled=True),
        caption=CaptionSettings(enabled=True, max_new_tokens=8, min_size=32, **tiny),
        # One face founds a person here, so the one photo shows people at once.
        face=FaceSettings(
            enabled=True, model="Dlib", device="cpu", people=PeopleSettings(min_faces=1)
        ),
    )


@pytest.fixture
def browser() -> Iterator[object]:
    if not (CHROMIUM.is_file() and CHROMEDRIVER.is_file()):
        pytest.fail("chromium and chromium-driver are missing: `make install` installs them")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    profile = tempfile.mkdtemp(prefix="imagestream-chromium-")
    for flag in (
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--disable-background-networking",
        "--disable-component-update",
        "--no-first-run",
        "--disable-sync",
        "--window-size=1200,1100",
        f"--user-data-dir={profile}",
    ):
        options.add_argument(flag)
    # An explicit driver path: Selenium Manager would try to download one.
    driver = webdriver.Chrome(options=options, service=Service(str(CHROMEDRIVER)))
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


def _use_the_page(driver: object, url: str, key: str, photo: Path) -> dict[str, str]:
    """What a person does on the page; returns what it then shows. Blocking (Selenium)."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.remote.webdriver import WebDriver
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    assert isinstance(driver, WebDriver)
    wait = WebDriverWait(driver, 90)
    driver.get(f"{url}/demo")
    driver.find_element(By.ID, "api-key").send_keys(key)
    driver.find_element(By.ID, "file").send_keys(str(photo))
    driver.find_element(By.ID, "analyse").click()
    wait.until(ec.text_to_be_present_in_element((By.ID, "status"), "done"))
    driver.find_element(By.ID, "query").send_keys("two people")
    driver.find_element(By.ID, "search-button").click()
    wait.until(ec.text_to_be_present_in_element((By.ID, "search-status"), "image(s)"))
    wait.until(lambda d: d.execute_script("return document.body.dataset.thumbnails === '0'"))
    wait.until(
        lambda d: d.execute_script("return [...document.images].every((img) => img.complete)")
    )
    _name_a_person(driver, wait, "Sam")
    SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
    assert driver.save_screenshot(str(SCREENSHOT))
    shown = {
        name: driver.find_element(By.ID, name).text
        for name in ("status", "caption", "labels", "faces", "similar", "search-results")
    }
    shown["thumbnails"] = driver.execute_script(
        "return String([...document.querySelectorAll('#search-results img')]"
        ".filter((img) => img.naturalWidth > 0).length)"
    )
    shown["people"] = driver.find_element(By.ID, "people-status").text
    shown["names"] = driver.execute_script(
        "return [...document.querySelectorAll('.person-name')].map((e) => e.textContent)"
    )
    shown["covers"] = driver.execute_script(
        "return document.querySelectorAll('.person canvas[data-drawn]').length"
    )
    shown["analysed"] = driver.execute_script("return document.body.dataset.analysed")
    shown["boxes"] = driver.execute_script(
        "return document.getElementById('preview').dataset.faces"
    )
    return shown


def _name_a_person(driver: object, wait: object, name: str) -> None:
    """Wait for the people the upload founded, name the first, wait for the new name."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.remote.webdriver import WebDriver
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    assert isinstance(driver, WebDriver)
    assert isinstance(wait, WebDriverWait)
    wait.until(ec.text_to_be_present_in_element((By.ID, "people-status"), "2 person(s)"))
    first = driver.find_element(By.CSS_SELECTOR, ".person")
    first.find_element(By.TAG_NAME, "input").send_keys(name)
    first.find_element(By.TAG_NAME, "button").click()
    wait.until(ec.text_to_be_present_in_element((By.ID, "people"), name))
    wait.until(
        lambda d: (
            d.execute_script("return document.querySelectorAll('canvas[data-drawn]').length") == 2
        )
    )


async def test_the_demo_page_shows_every_task_and_searches_by_text(
    settings: Settings, browser: object, tmp_path: Path
) -> None:
    photo = tmp_path / "two-faces.jpg"
    photo.write_bytes(jpeg(two_face_photo()))
    async with (
        running_consumers(settings, TASKS),
        running_gateway(settings, any_port_if_busy=True) as gateway,
    ):
        shown = await asyncio.to_thread(_use_the_page, browser, gateway.url, KEY, photo)

    assert "done: 4 task(s)" in shown["status"], shown["status"]
    assert "failed" not in shown["status"]
    assert shown["caption"] not in ("", "-", "(empty)", "(caption task off)")
    assert len(shown["labels"].splitlines()) == settings.zero_shot.top_k
    assert shown["faces"] == "2 face(s)"
    assert shown["boxes"] == "2"  # drawn on the preview
    assert shown["people"] == "2 person(s)"
    assert sorted(shown["names"]) == ["Sam · 1 face(s)", "unnamed · 1 face(s)"]
    assert shown["covers"] == 2  # each person's face cut from the uploaded photo
    # The uploaded image is the only one, so text search ranks exactly it.
    assert shown["analysed"] in shown["search-results"]
    assert shown["thumbnails"] == "1"  # fetched with the key (an <img src> sends none)
    png = SCREENSHOT.read_bytes()
    assert png.startswith(b"\x89PNG")
    assert len(png) > 10_000
