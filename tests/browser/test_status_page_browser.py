"""The status page in a real browser: headless Chromium (Debian's) against an in-process
daemon with three upstreams, one flowing, one throttled and one whose window is closed.

It reads the states and the allowance bar as a person sees them, signs in with the admin
token, presses "Test credentials" on an upstream whose server refuses AUTH and reads the
provider's fix, checks the page at phone width and by keyboard, and saves screenshots under
build/screenshots/ (the path is printed; docs/status-page.png is one of them).

The last day's chart history is seeded into the store (a plausible working day), so the
screenshot shows what the charts look like after a day; everything else is live.
"""

from __future__ import annotations

import asyncio
import datetime
import math
import textwrap
import time
from pathlib import Path

from selenium.webdriver.chrome.webdriver import WebDriver
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.support import expected_conditions
from selenium.webdriver.support.ui import Select, WebDriverWait

from relayd.config.model import load
from relayd.daemon.relayd import Relayd
from relayd.policy.hints import hint_for
from relayd.store.base import MinuteSample
from relayd.types import RecipientState, SmtpReply, UpstreamHold
from tests.conftest import running
from tests.integration.test_admin import admin_port, store_of
from tests.support.browser import chromium
from tests.support.client import send
from tests.support.fake_provider import FakeProvider
from tests.support.fake_upstream import FakeUpstream
from tests.support.tls import PrivateCA
from tests.support.waits import until

TOKEN = "browser-token-4c1d"
REFUSAL = "535 5.7.8 Username and Password not accepted"
SCREENSHOTS = Path(__file__).resolve().parents[2] / "build" / "screenshots"


def write_config(tmp_path: Path, flowing: int, provider: int, ca: PrivateCA) -> Path:
    (tmp_path / "admin.token").write_text(TOKEN + "\n")
    (tmp_path / "gmail.secret").write_text("app-password-that-is-wrong\n")
    today = datetime.datetime.now(datetime.UTC).date()
    closed = [today + datetime.timedelta(days=n) for n in (-1, 0, 1)]  # whatever the zone
    generic = 'provider = "generic"\nhost = "127.0.0.1"\nsecurity = "none"\nauth = "none"\n'
    text = f"""
        [server]
        listen = ["127.0.0.1:0"]
        hostname = "relay.test"

        [queue]
        path = "{tmp_path / "queue.db"}"
        retry = ["1h"]

        [log]
        format = "console"

        [admin]
        listen = "127.0.0.1:0"
        token_file = "admin.token"

        [routing]
        default = "office"

        [upstreams.office]
        {generic}port = {flowing}
        rate_limits = ["200/hour", "1000/day"]

        [upstreams.gmail]
        provider = "gmail"
        host = "127.0.0.1"
        port = {provider}
        tls_ca_file = "{ca.save(tmp_path / "ca")}"
        username = "practice@gmail.com"
        password_file = "gmail.secret"
        senders = ["*@practice.example"]
        rate_limits = ["100/day"]

        [upstreams.newsletter]
        {generic}port = {flowing}
        senders = ["news@example.org"]

        [upstreams.newsletter.window]
        hours = ["08:00-18:00"]
        closed_dates = [{", ".join(d.isoformat() for d in closed)}]
    """
    path = tmp_path / "relayd.toml"
    path.write_text(textwrap.dedent(text).replace("\n        ", "\n"))
    return path


def seed_history(now: float) -> list[MinuteSample]:
    """A working day: traffic from 08:00 to 18:00 local, a dip at lunch, a short backlog."""
    samples = []
    start = int(now) // 60 * 60 - 24 * 3600
    for minute in range(start, int(now) // 60 * 60, 60):
        hour = time.localtime(minute).tm_hour + time.localtime(minute).tm_min / 60
        busy = max(0.0, math.sin((hour - 8) / 10 * math.pi)) if 8 <= hour < 18 else 0.0
        busy *= 0.5 if 12 <= hour < 13 else 1.0
        accepted = round(6 * busy + (minute // 60 % 7 == 0) * busy * 3)
        samples.append(
            MinuteSample(
                minute,
                accepted=accepted,
                delivered=max(0, accepted - (minute // 60 % 11 == 0)),
                deferred=int(minute // 60 % 13 == 0 and busy > 0),
                failed=int(minute // 60 % 97 == 0 and busy > 0),
                pending=round(4 * busy) + (12 if 15 <= hour < 15.5 else 0),
                held=1 if hour >= 16 else 0,
            )
        )
    return samples


async def prepare(daemon: Relayd, upstream: FakeUpstream) -> None:
    store = store_of(daemon)
    for sample in seed_history(time.time()):
        await store.add_minute(sample, keep_since=0)
    smtp = daemon.addresses[0][1]
    await send(smtp, rcpts=["front-desk@example.net", "nobody@example.net"])
    await send(smtp, mail_from="news@example.org", rcpts=["subscriber@example.net"])
    await until(lambda: _settled(daemon))
    until_at = time.time() + 3 * 3600
    await store.hold_upstream(UpstreamHold("gmail", until_at, "421 4.7.0 Try again later"))
    await send(smtp, mail_from="billing@practice.example", rcpts=["patient@example.net"])


async def _settled(daemon: Relayd) -> bool:
    counts = await store_of(daemon).counts()
    return counts[RecipientState.DELIVERED] == 1 and counts[RecipientState.FAILED] == 1


def card(driver: WebDriver, name: str) -> str:
    return driver.find_element(By.CSS_SELECTOR, f'[data-upstream="{name}"]').text


def flat(text: str) -> str:
    return " ".join(text.split())


def screenshot(driver: WebDriver, name: str, width: int) -> Path:
    height = driver.execute_script("return document.documentElement.scrollHeight")
    driver.set_window_size(width, int(height) + 120)
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    path = SCREENSHOTS / name
    driver.save_screenshot(str(path))
    print(f"screenshot: {path}")
    return path


def use_the_page(driver: WebDriver, base: str) -> None:
    driver.get(base + "/")
    assert driver.title == "relayd"
    office, gmail, news = card(driver, "office"), card(driver, "gmail"), card(driver, "newsletter")
    assert "flowing" in office
    assert "1 / 200 this hour, resets" in office and "1 / 1000 in 24 hours" in office
    meter = driver.find_element(By.CSS_SELECTOR, '[data-upstream="office"] meter')
    assert (meter.get_attribute("value"), meter.get_attribute("max")) == ("1", "200")
    assert (meter.get_attribute("aria-label") or "").startswith("office: 1 / 200 this hour")
    assert "throttled until" in gmail and "421 4.7.0 Try again later" in gmail
    assert "1 queued" in gmail
    assert "window closed until" in news and "Sending window: opens" in news
    assert (
        "nobody@example.net"
        in driver.find_element(By.ID, "problems-h").find_element(By.XPATH, "..").text
    )
    assert not driver.find_elements(By.XPATH, "//button[text()='Test credentials']")  # signed out
    screenshot(driver, "status-page-read-only.png", 1280)

    # Keyboard: the first Tab reaches the skip link, which leads to the content.
    driver.set_window_size(1280, 1000)
    driver.get(base + "/")
    driver.find_element(By.TAG_NAME, "body").send_keys(Keys.TAB)
    assert driver.switch_to.active_element.text == "Skip to content"

    # Sign in once for this browser session, by keyboard.
    driver.get(base + "/login")
    field = driver.find_element(By.ID, "token")
    assert driver.find_element(By.CSS_SELECTOR, 'label[for="token"]').text.startswith("Admin token")
    field.send_keys(TOKEN, Keys.ENTER)
    WebDriverWait(driver, 10).until(expected_conditions.url_to_be(base + "/"))
    screenshot(driver, "status-page.png", 1280)
    driver.set_window_size(1280, 1000)

    # Send test: its own page (the status page refreshes), a real message through the queue.
    driver.find_element(By.LINK_TEXT, "Send test…").click()
    WebDriverWait(driver, 10).until(expected_conditions.title_is("Send test"))
    driver.find_element(By.ID, "to").send_keys("front-desk@example.net")
    Select(driver.find_element(By.ID, "via")).select_by_visible_text("office")
    driver.find_element(By.XPATH, "//button[text()='Send test']").click()
    answer = (
        WebDriverWait(driver, 30)
        .until(expected_conditions.presence_of_element_located((By.CSS_SELECTOR, "[role=status]")))
        .text
    )
    assert answer.startswith("delivered: ") and "front-desk@example.net" in answer, answer

    # The queue: filter, open a message, hold it after confirming.
    driver.get(base + "/queue")
    Select(driver.find_element(By.ID, "f-upstream")).select_by_visible_text("gmail")
    driver.find_element(By.XPATH, "//button[text()='Filter']").click()
    WebDriverWait(driver, 10).until(expected_conditions.url_contains("upstream=gmail"))
    rows = driver.find_elements(By.CSS_SELECTOR, "main tbody tr")
    assert len(rows) == 1 and "patient@example.net" in rows[0].text
    rows[0].find_element(By.TAG_NAME, "a").click()
    WebDriverWait(driver, 10).until(expected_conditions.title_contains("Message "))
    assert "throttled until" in driver.find_element(By.TAG_NAME, "main").text  # why it waits
    driver.find_element(By.LINK_TEXT, "Hold").click()
    assert "Hold this message?" in driver.find_element(By.TAG_NAME, "main").text
    driver.find_element(By.XPATH, "//button[text()='Yes, hold']").click()
    done = WebDriverWait(driver, 10).until(
        expected_conditions.presence_of_element_located((By.CSS_SELECTOR, ".done"))
    )
    assert done.text == "Done: held 1 recipient."
    assert "held" in driver.find_element(By.CSS_SELECTOR, "main tbody").text
    screenshot(driver, "queue-message.png", 1280)
    driver.set_window_size(1280, 1000)

    driver.get(base + "/")
    button = driver.find_element(
        By.CSS_SELECTOR, '[data-upstream="gmail"] form button[type="submit"]'
    )
    assert button.text == "Test credentials"
    button.click()
    WebDriverWait(driver, 30).until(expected_conditions.title_is("Test credentials: gmail"))
    body = driver.find_element(By.TAG_NAME, "main").text
    assert "A check failed" in body and REFUSAL in body
    hint = hint_for("gmail", SmtpReply(535, REFUSAL[4:]), None)
    assert hint is not None and flat(hint) in flat(body)
    assert "app-password-that-is-wrong" not in driver.page_source
    screenshot(driver, "test-credentials.png", 1280)

    # Phone width: nothing wider than the screen.
    driver.set_window_size(390, 844)
    driver.get(base + "/")
    overflow = driver.execute_script(
        "return document.documentElement.scrollWidth - document.documentElement.clientWidth"
    )
    assert overflow <= 0, f"the page is {overflow}px wider than a phone's screen"
    screenshot(driver, "status-page-phone.png", 390)


async def test_the_status_page_in_chromium(tmp_path: Path, upstream: FakeUpstream) -> None:
    upstream.script.rcpt_replies["nobody@example.net"] = (
        "550 5.1.1 <nobody@example.net>: no such user"
    )
    ca = PrivateCA()
    async with FakeProvider("starttls", ca.server_context()) as provider:
        provider.auth_reply = REFUSAL
        config = load(write_config(tmp_path, upstream.port, provider.port, ca))
        async with running(config) as daemon:
            await prepare(daemon, upstream)
            with chromium() as driver:
                base = f"http://127.0.0.1:{admin_port(daemon)}"
                await asyncio.to_thread(use_the_page, driver, base)
