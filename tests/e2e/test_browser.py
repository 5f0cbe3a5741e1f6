"""A real headless Chromium against a real server (`manage.py serve` with the reference script): log in
to the admin, back up from the live dashboard and watch it move without a reload, then delete the new
backup from the admin and see its folder go; restore an archive through the dashboard's dialog and
find its folder on disk. It screenshots the dashboard mid-run; with
SAVE_SCREENSHOT=1 the screenshot replaces docs/dashboard.png (the README's picture)."""

from __future__ import annotations

import io
import os
import tarfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from selenium import webdriver
from selenium.common.exceptions import (
    ElementClickInterceptedException,
    ElementNotInteractableException,
    NoSuchElementException,
    StaleElementReferenceException,
)
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support import expected_conditions as EC
from selenium.webdriver.support.ui import Select, WebDriverWait

from tests.conftest import PROJECT, make_backup, manage

pytestmark = pytest.mark.browser

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
README_SCREENSHOT = PROJECT / "docs" / "dashboard.png"
USERNAME, PASSWORD = "root", "a-long-browser-test-password"
CHROMIUM_FLAGS = (
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--window-size=1280,900",
)


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[webdriver.Chrome]:
    missing = [str(path) for path in (CHROMIUM, CHROMEDRIVER) if not path.exists()]
    if missing:
        pytest.skip(
            f"needs headless Chromium: {', '.join(missing)} missing "
            "(apt-get install -y chromium chromium-driver)"
        )
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in CHROMIUM_FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={tmp_path / 'chromium-profile'}")
    options.set_capability("goog:loggingPrefs", {"browser": "SEVERE"})
    driver = webdriver.Chrome(service=Service(executable_path=str(CHROMEDRIVER)), options=options)
    driver.set_page_load_timeout(30)
    # The window size includes room for browser chrome even headless; the page itself gets exactly this.
    driver.execute_cdp_cmd(
        "Emulation.setDeviceMetricsOverride",
        {"width": 1280, "height": 900, "deviceScaleFactor": 1, "mobile": False},
    )
    try:
        yield driver
    finally:
        driver.quit()


def backup_sources(tmp: Path) -> None:
    """The folders `server_env` points the reference script at; the script refuses missing ones."""
    for name in ("app", "uploads", "configs", "ssl", "nginx"):
        folder = tmp / "src" / name
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "README").write_text(f"{name} of the browser test\n")


def older_backups(root: Path) -> set[str]:
    """Two backups made earlier (by cron, say): the list is not empty, and the new one must be found."""
    names = set()
    for days_ago in (1, 2):
        moment = time.time() - days_ago * 86400
        name = time.strftime("backup-%Y%m%d_030000", time.localtime(moment))
        files = {"database.sql": "-- dump\n" * 4000, "configs/app.env": "A=1\n"}
        make_backup(root, name, files, mtime=moment)
        names.add(name)
    return names


def new_completed_backup(driver: webdriver.Chrome, known: set[str]) -> str | None:
    # One script: the table is re-rendered from the API while the run goes on.
    return driver.execute_script(
        """
        for (const row of document.querySelectorAll("#backups-table tbody tr[data-backup-id]")) {
            const done = row.querySelector('.bd-badge[data-status="completed"]');
            if (done && !arguments[0].includes(row.dataset.backupId)) return row.dataset.backupId;
        }
        return null;""",
        sorted(known),
    )


def progress_of(driver: webdriver.Chrome) -> int:
    return int(driver.find_element(By.ID, "progress-bar").get_attribute("aria-valuenow"))


def make_superuser(server) -> None:
    """The admin account the browser logs in with (USERNAME / PASSWORD), made by Django's own command."""
    created = manage(
        {**server.env, "DJANGO_SUPERUSER_PASSWORD": PASSWORD},
        "createsuperuser",
        "--noinput",
        "--username",
        USERNAME,
        "--email",
        "root@example.org",
    )
    assert created.returncode == 0, created.stderr[-2000:]


def log_in(driver: webdriver.Chrome, base: str, then: str = "/dashboard/") -> None:
    driver.get(f"{base}/admin/login/?next={then}")
    driver.find_element(By.NAME, "username").send_keys(USERNAME)
    driver.find_element(By.NAME, "password").send_keys(PASSWORD)
    driver.find_element(By.CSS_SELECTOR, "input[type=submit]").click()


def test_back_up_from_the_dashboard_then_delete_from_the_admin(
    start_server, browser: webdriver.Chrome, tmp_path: Path
) -> None:
    backup_sources(tmp_path)
    known = older_backups(tmp_path / "backups")
    # 0.6 s between the script's 7 steps: a few seconds of visible progress.
    server = start_server(BACKUP_STEP_DELAY="0.6")
    make_superuser(server)
    wait = WebDriverWait(browser, 20)

    log_in(browser, server.base)
    wait.until(EC.text_to_be_present_in_element((By.ID, "ws-state"), "Live"))
    header = browser.execute_script(
        "return getComputedStyle(document.getElementById('header')).backgroundColor"
    )
    assert header not in ("rgba(0, 0, 0, 0)", "transparent"), "the admin's CSS is not served under /static/"
    assert len(browser.find_elements(By.CSS_SELECTOR, "#backups-table tbody tr")) == len(known)
    # Survives only if the page is never reloaded: everything below must arrive live.
    browser.execute_script("window.__sameDocument = true;")

    # A test run leaves the repository as it was unless asked to refresh the README's picture.
    screenshot = README_SCREENSHOT if os.environ.get("SAVE_SCREENSHOT") == "1" else tmp_path / "dashboard.png"
    browser.find_element(By.ID, "backup-now").click()
    seen: list[int] = []
    screenshot_taken = False
    deadline = time.monotonic() + 40
    while time.monotonic() < deadline:
        percent = progress_of(browser)
        if not seen or percent != seen[-1]:
            seen.append(percent)
        if not screenshot_taken and 35 <= percent < 100:
            screenshot_taken = browser.save_screenshot(str(screenshot))
        if percent == 100:
            break
        time.sleep(0.1)
    assert seen[-1] == 100, f"progress stopped at {seen}:\n{server.log()}"
    assert seen == sorted(seen), f"progress went down: {seen}"
    assert screenshot_taken
    assert len([p for p in seen if 0 < p < 100]) >= 3, f"too few progress steps seen: {seen}"
    # 100 % arrives with the last progress event; the run's end (which hides Cancel) right after it.
    wait.until(lambda driver: driver.find_element(By.ID, "cancel-run").get_attribute("hidden") is not None)

    backup_id = wait.until(lambda driver: new_completed_backup(driver, known))
    assert browser.execute_script("return window.__sameDocument === true;")
    folder = tmp_path / "backups" / backup_id
    assert folder.is_dir()

    browser.get(f"{server.base}/admin/backups/backup/")
    browser.find_element(By.CSS_SELECTOR, f"input[name=_selected_action][value='{backup_id}']").click()
    Select(browser.find_element(By.NAME, "action")).select_by_value("delete_backups")
    browser.find_element(By.CSS_SELECTOR, "button[name=index]").click()
    wait.until(EC.presence_of_element_located((By.ID, "confirm-delete"))).click()
    message = wait.until(EC.presence_of_element_located((By.CSS_SELECTOR, ".messagelist .success")))
    assert backup_id in message.text
    assert not folder.exists()
    errors = [
        entry["message"] for entry in browser.get_log("browser") if "favicon.ico" not in entry["message"]
    ]
    assert errors == []


def test_the_dashboard_and_the_admin_preview_a_retention_policy_before_it_is_saved(
    start_server, browser: webdriver.Chrome, tmp_path: Path
) -> None:
    root = tmp_path / "backups"
    root.mkdir(exist_ok=True)
    names = []
    for days_ago in range(1, 6):
        moment = time.time() - days_ago * 86400
        names.append(time.strftime("backup-%Y%m%d_030000", time.localtime(moment)))
        make_backup(root, names[-1], mtime=moment)
    server = start_server()
    make_superuser(server)
    wait = WebDriverWait(browser, 20)
    log_in(browser, server.base)
    wait.until(
        EC.text_to_be_present_in_element((By.ID, "retention-preview"), "The saved policy deletes no backup")
    )
    assert "At 03:00, every day" in browser.find_element(By.ID, "next-run-sub").text

    for name, value in (("daily", "2"), ("weekly", "0"), ("monthly", "0"), ("keepWithinHours", "0")):
        field = browser.find_element(By.CSS_SELECTOR, f"#retention-form input[name={name}]")
        field.clear()
        field.send_keys(value)
    wait.until(
        EC.text_to_be_present_in_element((By.ID, "retention-preview"), "Saving this deletes 3 backups")
    )
    preview = browser.find_element(By.ID, "retention-preview").text
    assert all(name in preview for name in names[2:]) and names[0] not in preview
    doomed = browser.find_element(By.CSS_SELECTOR, f"tr[data-backup-id='{names[4]}'] .bd-why").text
    assert doomed == "deleted by this policy: beyond daily 2"
    assert sorted(p.name for p in root.iterdir() if p.name.startswith("backup-")) == sorted(names)

    browser.get(f"{server.base}/admin/backups/backupconfig/")
    wait.until(
        EC.text_to_be_present_in_element((By.ID, "retention-preview"), "Saving this deletes no backup")
    )
    for name, value in (
        ("retention_daily", "1"),
        ("retention_weekly", "0"),
        ("retention_monthly", "0"),
        ("retention_within", "0"),
    ):
        field = browser.find_element(By.NAME, name)
        field.clear()
        field.send_keys(value)
    wait.until(
        EC.text_to_be_present_in_element((By.ID, "retention-preview"), "Saving this deletes 4 backups")
    )
    assert "beyond daily 1" in browser.find_element(By.ID, "retention-preview").text
    errors = [
        entry["message"] for entry in browser.get_log("browser") if "favicon.ico" not in entry["message"]
    ]
    assert errors == []


def _uploads_archive() -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as archive:
        for path, data in (("uploads/a.jpg", b"jpeg bytes\n"), ("uploads/b/c.png", b"png bytes\n")):
            info = tarfile.TarInfo(path)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def click(wait: WebDriverWait, css: str) -> None:
    """Click what the selector finds once it can be clicked; found again if the live page re-rendered it
    between finding and clicking."""

    def attempt(driver: webdriver.Chrome) -> bool:
        try:
            driver.find_element(By.CSS_SELECTOR, css).click()
        except (
            StaleElementReferenceException,
            NoSuchElementException,
            ElementClickInterceptedException,
            ElementNotInteractableException,
        ):
            return False
        return True

    wait.until(attempt)


def test_restore_a_files_archive_from_the_dashboard_and_see_its_folder_on_disk(
    start_server, browser: webdriver.Chrome, tmp_path: Path
) -> None:
    name = time.strftime("backup-%Y%m%d_030000", time.localtime(time.time() - 86400))
    make_backup(
        tmp_path / "backups", name, {"images-uploads.tar.gz": _uploads_archive(), "beauty.sql": "-- dump\n"}
    )
    staging = tmp_path / "restore"
    staging.mkdir()
    server = start_server(RESTORE_DIRECTORIES=f"staging={staging}")
    make_superuser(server)
    wait = WebDriverWait(browser, 30)
    log_in(browser, server.base)
    click(wait, f"tr[data-backup-id='{name}'] .rd-open")
    wait.until(
        EC.presence_of_element_located(
            (By.CSS_SELECTOR, "#restore-what option[value='images-uploads.tar.gz']")
        )
    )
    Select(browser.find_element(By.ID, "restore-what")).select_by_value("images-uploads.tar.gz")
    assert [o.text for o in Select(browser.find_element(By.ID, "restore-target")).options] == ["staging"]
    assert browser.find_element(By.ID, "restore-go").get_attribute("disabled") is not None
    browser.find_element(By.ID, "restore-dry-run").click()
    wait.until(EC.text_to_be_present_in_element((By.ID, "restore-plan"), "Would create the folder"))
    assert "with 2 files" in browser.find_element(By.ID, "restore-plan").text
    assert list(staging.iterdir()) == []  # the dry run wrote nothing
    confirm = browser.find_element(By.ID, "restore-confirm")
    confirm.send_keys("backup-wrong")
    assert browser.find_element(By.ID, "restore-go").get_attribute("disabled") is not None
    confirm.clear()
    confirm.send_keys(name)
    wait.until(EC.element_to_be_clickable((By.ID, "restore-go"))).click()
    wait.until(
        EC.text_to_be_present_in_element((By.ID, "restore-status"), "Extracted 2 files into the folder")
    )
    [folder] = list(staging.iterdir())
    assert (
        folder.name.startswith(f"{name}-")
        and folder.name in browser.find_element(By.ID, "restore-status").text
    )
    assert (folder / "uploads" / "a.jpg").read_bytes() == b"jpeg bytes\n"
    assert (folder / "uploads" / "b" / "c.png").read_bytes() == b"png bytes\n"

    # The admin's backup page opens the same dialog.
    browser.get(f"{server.base}/admin/backups/backup/{name}/change/")
    click(wait, "#restore-open")
    wait.until(EC.presence_of_element_located((By.CSS_SELECTOR, "#restore-what option[value='beauty.sql']")))
    Select(browser.find_element(By.ID, "restore-what")).select_by_value("beauty.sql")
    assert "No database target" in browser.find_element(By.ID, "restore-note").text
    errors = [
        entry["message"] for entry in browser.get_log("browser") if "favicon.ico" not in entry["message"]
    ]
    assert errors == []
