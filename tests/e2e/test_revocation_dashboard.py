"""The operator dashboard in a real headless browser (Debian chromium + chromium-driver, driven
by selenium): sign in, see a pump the simulator enrolled, revoke it through the confirmation
dialog, see its state change; the screenshot is saved under artifacts/."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support import expected_conditions
from selenium.webdriver.support.ui import WebDriverWait

from tests.e2e.test_radius import enrolled_pump
from tests.lifecycle.conftest import ADMIN_PASSWORD, ADMIN_USER, admin_hash
from tests.support import Lab, RunningAppliance, curl, make_lab, start_appliance

pytestmark = pytest.mark.e2e

ARTIFACTS = Path(__file__).resolve().parents[2] / "artifacts"
CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"


@pytest.fixture(scope="module")
def dash_lab(tmp_path_factory: pytest.TempPathFactory) -> Lab:
    return make_lab(
        tmp_path_factory.mktemp("dashboard"),
        {
            "admin": {"users": {ADMIN_USER: admin_hash()}},
            "pki": {"organization": "St. Example Hospital"},
        },
    )


@pytest.fixture(scope="module")
def dash_appliance(dash_lab: Lab) -> Iterator[RunningAppliance]:
    running = start_appliance(dash_lab)
    yield running
    running.stop()


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[webdriver.Chrome]:
    for path in (CHROMIUM, CHROMEDRIVER):
        assert Path(path).exists(), (
            f"{path} is missing: apt-get install chromium chromium-driver (scripts/setup.sh)"
        )
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (
        "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync",
        "--disable-dev-shm-usage", f"--user-data-dir={tmp_path / 'profile'}",
        "--window-size=1440,1100",
        # The lab CA is made per test run; the browser is only ever pointed at 127.0.0.1.
        "--ignore-certificate-errors",
    ):  # fmt: skip
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()


def test_sign_in_see_a_pump_revoke_it_and_see_its_state_change(
    dash_appliance: RunningAppliance, browser: webdriver.Chrome, out: Path
) -> None:
    for i in range(1, 6):
        enrolled_pump(dash_appliance, f"NPPR00{i}", out)
    # A refused enrollment, so the failures panel has something to show.
    lab = dash_appliance.lab
    status, _h, _b = curl(
        ["--cacert", str(lab.ca_cert), "--cert", str(lab.ra_cert), "--key", str(lab.ra_key),
         "-H", "Content-Type: application/pkcs10", "--data", "not a CSR",
         dash_appliance.url("simpleenroll")]
    )  # fmt: skip
    assert status == 400
    wait = WebDriverWait(browser, 15)

    browser.get(f"{dash_appliance.base}/dashboard/")
    wait.until(expected_conditions.presence_of_element_located((By.ID, "sign-in")))
    assert browser.current_url.endswith("/dashboard/login")
    # Negative control: an enrollment credential does not sign in.
    browser.find_element(By.ID, "username").send_keys("iqe-gateway")
    browser.find_element(By.ID, "password").send_keys("iqe-secure-password-2024")
    browser.find_element(By.ID, "sign-in").click()
    wait.until(expected_conditions.presence_of_element_located((By.CLASS_NAME, "alert-error")))
    assert "wrong" in browser.find_element(By.CLASS_NAME, "alert-error").text

    browser.find_element(By.ID, "username").send_keys(ADMIN_USER)
    browser.find_element(By.ID, "password").send_keys(ADMIN_PASSWORD)
    browser.find_element(By.ID, "sign-in").click()
    wait.until(expected_conditions.presence_of_element_located((By.ID, "pump-table")))

    row = 'tr[data-cn="NPPR003"]'
    badge = browser.find_element(By.CSS_SELECTOR, f"{row} .badge")
    assert badge.get_attribute("data-state") == "valid"
    browser.find_element(By.CSS_SELECTOR, f"{row} button").click()
    dialog = wait.until(
        expected_conditions.visibility_of_element_located((By.ID, "confirm-dialog"))
    )
    assert "NPPR003" in dialog.text
    # Cancel first: nothing may change.
    browser.find_element(By.ID, "confirm-cancel").click()
    wait.until(expected_conditions.invisibility_of_element_located((By.ID, "confirm-dialog")))
    browser.refresh()
    assert (
        browser.find_element(By.CSS_SELECTOR, f"{row} .badge").get_attribute("data-state")
        == "valid"
    )

    browser.find_element(By.CSS_SELECTOR, f"{row} button").click()
    wait.until(expected_conditions.visibility_of_element_located((By.ID, "confirm-dialog")))
    browser.find_element(By.ID, "confirm-revoke").click()
    wait.until(expected_conditions.presence_of_element_located((By.ID, "notice")))
    assert "NPPR003 revoked" in browser.find_element(By.ID, "notice").text
    assert (
        browser.find_element(By.CSS_SELECTOR, f"{row} .badge").get_attribute("data-state")
        == "revoked"
    )
    # Control: the neighbouring pump is untouched.
    assert (
        browser.find_element(By.CSS_SELECTOR, 'tr[data-cn="NPPR002"] .badge').get_attribute(
            "data-state"
        )
        == "valid"
    )
    assert browser.find_element(By.ID, "count-revoked").text == "1"

    ARTIFACTS.mkdir(exist_ok=True)
    shot = ARTIFACTS / "dashboard.png"
    assert browser.save_screenshot(str(shot))
    assert shot.stat().st_size > 10_000
    shutil.copy(shot, out / "dashboard.png")
