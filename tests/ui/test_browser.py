"""`imgpipe ui` end to end: the real command in its own process, driven in headless
Chromium by Selenium (tests/ui/conftest.py: skipped without a browser, failed under
CI=true). Each step waits for what it looks for (Selenium's implicit wait), never for
a time."""

from __future__ import annotations

import os
import subprocess
import sys
import urllib.error
import urllib.request

from selenium.webdriver.common.by import By
from selenium.webdriver.support import expected_conditions
from selenium.webdriver.support.ui import WebDriverWait


def _open(browser, element, title: str) -> None:
    """Clicks `element` and waits until the page it opens (its <title> starts with
    `title`) has replaced this one: reading the old page's elements would race."""
    element.click()
    WebDriverWait(browser, 60).until(expected_conditions.title_contains(title))


def test_runs_list_to_a_run_to_its_lineage(world, start_console, browser):
    url, _ = start_console()
    browser.get(url + "/")
    assert browser.title.startswith("Runs in")
    first = world.run_ids[-1]
    _open(browser, browser.find_element(By.LINK_TEXT, first), f"Run {first}")
    assert browser.find_element(By.TAG_NAME, "h1").text == f"Run {first}"
    lineage = browser.find_element(By.CSS_SELECTOR, "svg.lineage")
    assert len(lineage.find_elements(By.CSS_SELECTOR, "g.node.execution")) == 2
    assert len(lineage.find_elements(By.CSS_SELECTOR, "g.node.artifact")) == 2
    assert len(lineage.find_elements(By.CSS_SELECTOR, "path.edge")) == 3
    # a step's box in the graph links to its row
    lineage.find_elements(By.CSS_SELECTOR, "g.node.execution")[0].click()
    assert browser.current_url.endswith("#step-produce")
    browser.switch_to.frame(browser.find_element(By.CSS_SELECTOR, "iframe.report"))
    assert browser.find_element(By.TAG_NAME, "h1").text.startswith(f"Run {first}")


def test_models_to_a_comparison(world, start_console, browser):
    url, _ = start_console()
    browser.get(url + "/models")
    _open(browser, browser.find_element(By.LINK_TEXT, "m"), "Model m")
    assert browser.find_element(By.CSS_SELECTOR, "svg.chart polyline")
    left = browser.find_element(By.NAME, "left")
    left.clear()
    left.send_keys("1")
    right = browser.find_element(By.NAME, "right")
    right.clear()
    right.send_keys("2")
    _open(browser, browser.find_element(By.XPATH, "//button[text()='compare']"), "Compare")
    assert browser.find_element(By.TAG_NAME, "h1").text == "Compare m:1 and m:2"
    assert len(browser.find_elements(By.CSS_SELECTOR, "table.cm")) == 2
    mistakes = browser.find_element(By.CSS_SELECTOR, "table.mistakes").text
    assert "e0" in mistakes and "e2" in mistakes and "fixed" in mistakes


def test_promote_with_a_reason_moves_the_alias_and_the_audit(world, start_console, browser):
    url, _ = start_console()
    browser.get(url + "/models/m/2")
    assert "production" not in browser.find_element(By.CSS_SELECTOR, "dl.kv").text
    browser.find_element(By.CSS_SELECTOR, "form[action='/models/m/promote'] input[name=reason]"
                         ).send_keys("beats production on eval")
    browser.find_element(By.XPATH, "//button[text()='promote']").click()
    note = WebDriverWait(browser, 60).until(expected_conditions.visibility_of_element_located(
        (By.CSS_SELECTOR, ".note.ok"))).text
    assert note.startswith("m@production: version 1 -> version 2 (promote")
    assert "production" in browser.find_element(By.CSS_SELECTOR, "dl.kv").text
    audit = browser.find_element(By.CSS_SELECTOR, "table.audit").text
    assert "promote @production 1 → 2 beats production on eval" in audit
    imgpipe = os.path.join(os.path.dirname(sys.executable), "imgpipe")
    shown = subprocess.run([imgpipe, "models", "show", "m@production", "--registry",
                            world.registry.root], capture_output=True, text=True, timeout=120)
    assert shown.returncode == 0, shown.stderr
    assert "promote @production 1 -> 2 beats production on eval" in shown.stdout
    assert shown.stdout.startswith("m:2  aliases: production")


def test_beyond_loopback_a_request_without_the_token_is_refused(world, start_console,
                                                                 browser):
    url, process = start_console("--host", "0.0.0.0", env={"IMGPIPE_UI_TOKEN": "s3cret-token"})
    url = url.replace("0.0.0.0", "127.0.0.1")
    try:
        urllib.request.urlopen(urllib.request.Request(
            url + "/models/m/promote", data=b"version=2&alias=production&reason=x",
            method="POST"), timeout=60)
        raise AssertionError("a POST without the token was answered")
    except urllib.error.HTTPError as exc:
        assert exc.code == 401
    with urllib.request.urlopen(urllib.request.Request(
            url + "/runs", headers={"Authorization": "Bearer s3cret-token"}), timeout=60) as ok:
        assert ok.status == 200
    browser.get(url + "/models")
    assert browser.find_element(By.TAG_NAME, "h1").text == "Sign in"
    browser.find_element(By.NAME, "token").send_keys("s3cret-token")
    _open(browser, browser.find_element(By.XPATH, "//button[text()='sign in']"), "Models in")
    assert browser.find_element(By.TAG_NAME, "h1").text.startswith("Models in")
    assert world.registry.aliases("m") == {"production": 1, "staging": 2}


def test_beyond_loopback_without_a_token_it_does_not_start(world):
    imgpipe = os.path.join(os.path.dirname(sys.executable), "imgpipe")
    env = {k: v for k, v in os.environ.items() if k != "IMGPIPE_UI_TOKEN"}
    done = subprocess.run([imgpipe, "ui", "--host", "0.0.0.0", "--runs-dir", world.runs,
                           "--registry", world.registry.root], capture_output=True, text=True,
                          timeout=120, env=env)
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr.startswith("imgpipe: error: --host 0.0.0.0 would let other machines")
    assert len(done.stderr.splitlines()) == 1
