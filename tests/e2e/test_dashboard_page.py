"""What the live dashboard says about the backups and the runs, read in a real headless Chromium against a
real server: counts in words, description and markers, times in the server's named time zone, a Status
card that tells of a failed run, no Download for an empty incomplete folder, "Cancelled by <user>" for a
person's cancel, and a link from the run to its whole output."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from selenium import webdriver
from selenium.webdriver.common.by import By
from selenium.webdriver.support import expected_conditions as EC
from selenium.webdriver.support.ui import WebDriverWait

from tests.e2e.test_browser import USERNAME, browser, log_in, make_superuser  # noqa: F401  (the fixture)
from tests.e2e.test_e2e import call, token_for, wait_run

pytestmark = [pytest.mark.browser, pytest.mark.slow]

# What the script does is chosen by the run's description: fill a folder, fail before writing anything,
# or work until it is cancelled (and then print what bash scripts print on SIGTERM).
SCRIPT = """#!/usr/bin/env bash
d="$BACKUP_ROOT/backup-$(date +%Y%m%d_%H%M%S)"
mkdir -p "$d"; echo "Backup directory: $d"
case "$BACKUP_DESCRIPTION" in
  fail-empty) echo "ERROR: pg_dump: connection refused" >&2; exit 1 ;;
  slow) echo "-- partial" > "$d/partial.sql"
        trap 'echo "ERROR: Interrupted by SIGTERM (line 1)" >&2; exit 143' TERM
        echo "[1/3] dumping databases"; sleep 300 & wait ;;
  *) mkdir -p "$d/configs"; echo "[1/2] dumping databases"; echo "-- dump" > "$d/database.sql"
     echo "A=1" > "$d/configs/app.env"; echo "[2/2] writing the manifest" ;;
esac
"""


def log_in_live(driver: webdriver.Chrome, base: str, wait: WebDriverWait) -> None:
    log_in(driver, base)
    wait.until(EC.text_to_be_present_in_element((By.ID, "ws-state"), "Live"))


def create(server, token: str, description: str) -> dict:
    status, _, body = call(server, "POST", "/api/backup/create", token, {"description": description})
    assert status == 202, body
    return json.loads(body)["run"]


def row_of(driver: webdriver.Chrome, backup_id: str):
    return driver.find_element(By.CSS_SELECTOR, f"#backups-table tr[data-backup-id='{backup_id}']")


def test_the_dashboard_tells_what_the_backups_and_the_last_run_are(
    start_server,
    browser: webdriver.Chrome,  # noqa: F811
    tmp_path: Path,
) -> None:
    script = tmp_path / "backup.sh"
    script.write_text(SCRIPT)
    script.chmod(0o755)
    server = start_server(BACKUP_SCRIPT=str(script), TZ="Europe/Berlin")
    make_superuser(server)
    token = token_for(server)

    # One good backup, described, pinned and verified.
    run = create(server, token, "before the release")
    run = wait_run(server, token, run["id"], lambda r: r["status"] not in ("queued", "running"))
    assert run["status"] == "succeeded", run
    good = run["backup_id"]
    assert call(server, "POST", f"/api/backup/{good}/pin", token)[0] == 200
    status, _, body = call(server, "POST", f"/api/backup/{good}/verify", token, {"level": "quick"})
    assert status == 202, body
    wait_run(server, token, json.loads(body)["run"]["id"], lambda r: r["status"] == "succeeded")

    wait = WebDriverWait(browser, 20)
    log_in_live(browser, server.base, wait)
    assert browser.find_element(By.ID, "backups-summary").text.startswith("1 backup ·")
    row = row_of(browser, good)
    assert row.find_element(By.CSS_SELECTOR, ".bd-desc").text == "before the release"
    tags = [tag.text.lower() for tag in row.find_elements(By.CSS_SELECTOR, ".bd-tag")]
    assert {"pinned", "verified"} <= set(tags), tags
    header = browser.find_element(By.CSS_SELECTOR, "#backups-table thead").text
    assert "(EUROPE/BERLIN)" in header.upper(), header
    # The creation time is the server's wall clock (Berlin), whatever the browser's zone.
    created_cell = row.find_elements(By.TAG_NAME, "td")[1].text
    berlin = browser.execute_script(
        "return new Date(arguments[0]).toLocaleString(undefined, "
        "{dateStyle: 'medium', timeStyle: 'short', timeZone: 'Europe/Berlin'});",
        json.loads(call(server, "GET", f"/api/backup/{good}", token)[2])["created_at"],
    )
    assert created_cell == berlin
    assert browser.find_element(By.ID, "stat-state").text == "Idle"

    # A run that fails before writing anything: the card says so, and the empty folder has no Download.
    time.sleep(1.1)  # a folder name per second
    failed = create(server, token, "fail-empty")
    wait.until(EC.text_to_be_present_in_element((By.ID, "stat-state"), "Last backup failed"))
    failed = wait_run(server, token, failed["id"], lambda r: r["status"] == "failed")
    wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, f"tr[data-backup-id='{failed['backup_id']}']"))
    wait.until(EC.text_to_be_present_in_element((By.ID, "backups-summary"), "2 backups ·"))
    empty = row_of(browser, failed["backup_id"])
    assert empty.find_element(By.CSS_SELECTOR, ".bd-badge").text.lower() == "incomplete"
    assert empty.find_elements(By.CSS_SELECTOR, "a[data-download]") == []
    assert row_of(browser, good).find_elements(By.CSS_SELECTOR, "a[data-download]")
    assert browser.find_element(By.ID, "stat-state").get_attribute("data-level") == "bad"
    assert "exit code 1" in browser.find_element(By.ID, "stat-state-sub").text
    browser.save_screenshot(str(tmp_path / "dashboard-failed.png"))

    # A person cancels a running backup: the page names them, not the script's reaction to the signal.
    time.sleep(1.1)
    slow = create(server, token, "slow")
    wait_run(server, token, slow["id"], lambda r: r["progress"]["stage"] == "dumping databases")
    wait.until(EC.visibility_of_element_located((By.ID, "cancel-run")))
    browser.find_element(By.ID, "cancel-run").click()
    browser.switch_to.alert.accept()
    wait.until(EC.text_to_be_present_in_element((By.ID, "run-error-title"), f"Cancelled by {USERNAME}."))
    wait.until(EC.text_to_be_present_in_element((By.ID, "stat-state"), "Last backup cancelled"))
    assert f"by {USERNAME}" in browser.find_element(By.ID, "stat-state-sub").text
    assert browser.find_element(By.ID, "run-title").text.startswith(f"Cancelled by {USERNAME}")
    assert "SIGTERM" not in browser.find_element(By.ID, "content-main").text
    ended = wait_run(server, token, slow["id"], lambda r: r["status"] == "cancelled")
    assert ended["error"].startswith(f"Cancelled by {USERNAME}")

    # The run links to its whole output, in the admin.
    link = browser.find_element(By.ID, "run-log")
    assert link.get_attribute("href").endswith(f"/admin/backups/run/{slow['id']}/change/")
    assert browser.find_element(By.ID, "run-started").text  # a time, in the zone named beside it
    assert "(Europe/Berlin)" in browser.find_element(By.ID, "run-facts").get_attribute("textContent")
    browser.save_screenshot(str(tmp_path / "dashboard-cancelled.png"))
    link.click()
    wait.until(EC.text_to_be_present_in_element((By.CSS_SELECTOR, "#content"), "dumping databases"))
    errors = [
        entry["message"] for entry in browser.get_log("browser") if "favicon.ico" not in entry["message"]
    ]
    assert errors == []
