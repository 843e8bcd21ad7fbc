"""The dashboard in a real headless Chromium (Debian's chromium + chromedriver, via Selenium)."""

from __future__ import annotations

import json
import shutil
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest
from selenium import webdriver
from selenium.common.exceptions import StaleElementReferenceException
from selenium.webdriver.chrome.service import Service as DriverService
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

from stream.api import STATIC
from tests.kafka_helpers import ServiceProcess, drifting_events, publish, service_config, wait_for_records

pytestmark = pytest.mark.kafka
ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts"
TOKEN = "dashboard-token"


@pytest.fixture
def browser(tmp_path):
    chromium, driver = shutil.which("chromium"), shutil.which("chromedriver")
    assert chromium and driver, "chromium and chromedriver are needed: run `make setup` (Debian packages)"
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--window-size=1280,1400", f"--user-data-dir={tmp_path / 'profile'}"):  # fmt: skip
        options.add_argument(flag)
    session = webdriver.Chrome(options=options, service=DriverService(executable_path=driver))
    yield session
    session.quit()


def test_dashboard_charts_the_metric_and_rolls_back_through_the_page(kafka, tmp_path, browser):
    config = service_config(kafka.bootstrap_servers, tmp_path, api={"port": 0, "token": TOKEN})
    topics = config["kafka"]
    publish(
        kafka.bootstrap_servers,
        topics["input_topic"],
        [json.dumps(e).encode() for e in drifting_events(6_000)],
    )
    service = ServiceProcess(tmp_path, config).start()
    try:
        wait_for_records(kafka.bootstrap_servers, topics["predictions_topic"], 6_000, timeout=120)
        url = service.api_url()
        browser.get(url + "/")
        # The snapshot table is rebuilt every 2 s: a row found just before may be detached, and
        # what was tried on it (a click that then never fired) is tried again.
        wait = WebDriverWait(browser, 30, ignored_exceptions=(StaleElementReferenceException,))
        wait.until(
            lambda b: b.execute_script("return window.dashboard && window.dashboard.metricPoints()") >= 10
        )
        wait.until(lambda b: len(b.find_elements(By.CSS_SELECTOR, "#snapshots tbody tr")) > 0)
        assert browser.find_element(By.ID, "ready").text == "ready"
        assert browser.find_elements(By.CSS_SELECTOR, "#metric-chart canvas")
        ARTIFACTS.mkdir(exist_ok=True)
        browser.save_screenshot(str(ARTIFACTS / "dashboard.png"))

        stats = httpx.get(url + "/api/stats").json()
        version = next(iter(stats["partitions"].values()))["model_version"]

        def click_rollback_of_a_drift(b: webdriver.Chrome) -> str:
            row = b.find_element(By.XPATH, "//tbody/tr[td[3][text()='drift']]")
            target = row.get_attribute("data-id")
            row.find_element(By.CSS_SELECTOR, "button.rollback").click()
            return target

        target = wait.until(click_rollback_of_a_drift)
        prompt = wait.until(lambda b: b.switch_to.alert)
        prompt.send_keys(TOKEN)
        prompt.accept()
        wait.until(lambda b: "rolled back to" in b.find_element(By.ID, "message").text)
        assert target in browser.find_element(By.ID, "message").text

        WebDriverWait(browser, 60, poll_frequency=0.2).until(
            lambda _: (
                next(iter(httpx.get(url + "/api/stats").json()["partitions"].values()))["model_version"]
                == version + 1
            ),
            "the status never showed the rolled-back model",
        )
        browser.save_screenshot(str(ARTIFACTS / "dashboard-after-rollback.png"))
    finally:
        assert service.stop() == 0, service.log()


# -- whatever the API returns is shown as text, never run ------------------------------------------

HOSTILE = '<img src=x onerror="window.pwned=1">'


def _hostile_api() -> dict[str, object]:
    """What /api/stats and /api/snapshots would return if every string could be chosen."""
    summary = {
        "metrics": {HOSTILE: 0.5}, "rolling_metric": HOSTILE, "drifts": HOSTILE, "snapshots": HOSTILE,
        "rollbacks": HOSTILE, "model_version": HOSTILE, "history": [{"event": 1, HOSTILE: 0.5}],
    }  # fmt: skip
    stats = {
        "predictions": HOSTILE, "events_per_second": 1, "lag": HOSTILE, "dead_letters": HOSTILE,
        "ready": True, "instance_id": HOSTILE, "guarantee": HOSTILE, "throughput": [],
        "partitions": {HOSTILE: summary},
    }  # fmt: skip
    snapshot = {
        "id": HOSTILE, "created_at": "2026-01-01T00:00:00Z", "reason": HOSTILE, "events_seen": HOSTILE,
        "model_version": HOSTILE, "metrics": {HOSTILE: 0.5}, "pinned": False,
    }  # fmt: skip
    return {"/api/stats": stats, "/api/snapshots": [snapshot]}


@pytest.fixture
def hostile_api() -> Iterator[str]:
    """The dashboard's files, and an API whose every string is markup."""
    answers = _hostile_api()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            path = self.path.split("?")[0]
            if path in answers:
                body, kind = json.dumps(answers[path]).encode(), "application/json"
            else:
                file = STATIC / ("index.html" if path == "/" else path.removeprefix("/static/"))
                if not file.is_file():
                    self.send_error(404)
                    return
                body, kind = file.read_bytes(), "text/javascript" if file.suffix == ".js" else "text/html"
            self.send_response(200)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


@pytest.mark.kafka
def test_with_delayed_labels_the_dashboard_shows_what_waits_and_what_was_joined(
    kafka, tmp_path, browser, new_topic
):
    config = service_config(
        kafka.bootstrap_servers,
        tmp_path,
        kafka={"input_topic": new_topic(prefix="events"), "label_topic": new_topic(prefix="labels")},
    )
    topics = config["kafka"]
    events = [{**event, "id": f"e{n}"} for n, event in enumerate(drifting_events(300))]
    publish(kafka.bootstrap_servers, topics["input_topic"], [
        json.dumps({name: value for name, value in e.items() if name != "y"}).encode() for e in events
    ])  # fmt: skip
    labels = [{"id": e["id"], "y": e["y"]} for e in events[:200]]  # the last 100 still wait
    publish(kafka.bootstrap_servers, topics["label_topic"], [json.dumps(label).encode() for label in labels])
    service = ServiceProcess(tmp_path, config).start()
    try:
        wait_for_records(kafka.bootstrap_servers, topics["predictions_topic"], 300, timeout=120)
        browser.get(service.api_url() + "/")

        def cards() -> dict[str, str]:
            """Each card's label and value, read in one script: the page renders the cards afresh
            as it refreshes, so an element found by one call may be gone (stale) by the next."""
            return dict(browser.execute_script(
                "return Array.from(document.querySelectorAll('#cards .card'), "
                "card => [card.querySelector('.label').innerText, card.querySelector('.value').innerText])"
            ))  # fmt: skip

        WebDriverWait(browser, 60).until(lambda _: cards().get("labels joined") == "200")
        shown = cards()
        assert shown["events waiting"] == "100" and shown["orphan labels"] == "0"
    finally:
        assert service.stop() == 0, service.log()


def test_the_dashboard_shows_what_the_api_returns_as_text_and_never_runs_it(hostile_api, browser):
    browser.get(hostile_api + "/")
    # The table is rendered afresh as the page refreshes: a row found may be gone (stale) when read.
    wait = WebDriverWait(browser, 30, ignored_exceptions=(StaleElementReferenceException,))
    [(row_id, first_cell)] = wait.until(
        lambda b: [
            (row.get_attribute("data-id"), row.find_elements(By.TAG_NAME, "td")[0].text)
            for row in b.find_elements(By.CSS_SELECTOR, "#snapshots tbody tr")
        ]
    )
    assert row_id == first_cell == HOSTILE
    assert browser.find_element(By.ID, "instance").text.startswith(HOSTILE)
    assert browser.find_element(By.CSS_SELECTOR, "#partition option").text == HOSTILE
    assert browser.find_elements(By.TAG_NAME, "img") == []  # no markup was made from the data
    assert browser.execute_script("return window.pwned") is None


def test_the_dashboard_never_parses_data_as_html():
    script = (STATIC / "dashboard.js").read_text()
    for sink in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write"):
        assert sink not in script, sink
