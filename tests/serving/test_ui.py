"""The /ui pages in a real headless browser (Debian's chromium + chromedriver, installed by `make test`):
a search shows every hit with its stage positions, cosine and relevance bars and the threshold line, the
primary beside its shadow with their overlap; the A/B page shows the arms with their SRM check.
Screenshots go to $SIFTRANK_SCREENSHOTS when set (`make ui-screenshots` keeps them in docs/ui/)."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.serving.conftest import write_experiment

CHROMIUM, DRIVER = shutil.which("chromium") or "/usr/bin/chromium", shutil.which("chromedriver") or "/usr/bin/chromedriver"


def browser():
    if not (Path(CHROMIUM).exists() and Path(DRIVER).exists()):
        pytest.skip("no chromium/chromedriver here (make test installs Debian's chromium and chromium-driver where "
                    "apt can; elsewhere: apt-get install chromium chromium-driver)")
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is in the dev extra")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1400,1000"):
        options.add_argument(flag)
    from selenium.webdriver.chrome.service import Service

    return webdriver.Chrome(service=Service(DRIVER), options=options)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory):
    """The service on a free port: a dense variant with a Cosine Adapter filter as primary, BM25 as shadow."""
    folder = tmp_path_factory.mktemp("ui")
    env = {**os.environ, "SIFTRANK_CACHE": str(folder / "cache")}
    experiment = write_experiment(folder)
    subprocess.run([sys.executable, "-m", "serving.cli", "calibrate", "--dataset", str(folder / "tiny"), "--split", "test",
                    "--k", "5", "--features", "global", "--out", str(folder / "calibrator")], check=True, env=env,
                   capture_output=True)
    (folder / "filtered.toml").write_text('[filter]\nkind = "cosine-adapter"\ncalibrator = "calibrator"\n')
    text = experiment.read_text().replace("[variants.dense]", '[variants.dense]\npipeline = "filtered.toml"')
    experiment.write_text(text.replace("interleave_share = 0.5", "interleave_share = 0.0"))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    process = subprocess.Popen([sys.executable, "-m", "serving.cli", "serve", "--experiment", str(experiment), "--port", str(port)],
                               env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        assert process.poll() is None, process.stderr.read() if process.stderr else ""
        try:
            if httpx.get(f"{base}/readyz", timeout=2).status_code == 200:
                break
        except httpx.HTTPError:
            time.sleep(0.3)
    for user in range(30):  # A/B traffic for the A/B page, a click on every other query
        body = httpx.post(f"{base}/search", json={"query": "how to bake bread", "k": 3, "user_id": f"u{user}"}).json()
        if user % 2:
            httpx.post(f"{base}/feedback", json={"query_id": body["query_id"], "events": [
                {"doc_id": body["hits"][0]["id"], "position": 1, "event": "click"}]})
    yield base
    process.terminate()
    process.wait(timeout=30)


def shoot(driver, name: str) -> None:
    folder = os.environ.get("SIFTRANK_SCREENSHOTS")
    if folder:
        Path(folder).mkdir(parents=True, exist_ok=True)
        driver.save_screenshot(str(Path(folder) / name))


def test_search_page_shows_stages_bars_threshold_and_the_shadow(server: str) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    driver = browser()
    try:
        driver.get(f"{server}/ui")
        box = driver.find_element(By.NAME, "q")
        box.send_keys("why do volcanoes erupt", Keys.ENTER)
        from selenium.webdriver.support.ui import WebDriverWait

        # submitting the form does not wait for the results page: wait for its two columns
        WebDriverWait(driver, 60).until(lambda d: len(d.find_elements(By.TAG_NAME, "section")) == 2)
        primary, shadow = driver.find_elements(By.TAG_NAME, "section")
        assert "primary: dense" in primary.text and "dense #1 → filter #1" in primary.text
        first = primary.find_elements(By.CSS_SELECTOR, "li")[0]
        assert first.get_attribute("data-doc") in {"d3", "d4"}
        assert first.find_elements(By.CSS_SELECTOR, ".bar.cos span") and first.find_elements(By.CSS_SELECTOR, ".bar.rel .thr")
        assert "shadow: bm25" in shadow.text and "/10" in driver.find_element(By.ID, "overlap").text
        from selenium.webdriver import ActionChains

        ActionChains(driver).move_to_element(first).perform()  # the same document lights up in both columns
        doc = first.get_attribute("data-doc")
        assert all("same" in li.get_attribute("class") for li in driver.find_elements(By.CSS_SELECTOR, f'li[data-doc="{doc}"]'))
        shoot(driver, "search.png")
        driver.get(f"{server}/ui/ab")
        tables = driver.find_elements(By.TAG_NAME, "table")
        assert "CTR 95% low" in tables[0].text and "SRM" in tables[0].text and "dense" in tables[0].text
        assert "p50" in driver.page_source
        shoot(driver, "ab.png")
    finally:
        driver.quit()
