"""A real browser for the end-to-end test: Debian's chromium, headless, driven by Selenium through
Debian's chromedriver (never a downloaded browser or driver). It resolves no name but 127.0.0.1 and
runs no background networking, so the page can reach Home Assistant and nothing else.

Home Assistant's frontend is web components inside shadow roots; the helpers here walk every shadow
root to find text and labels, and wait on the page (never a fixed sleep)."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.action_chains import ActionChains
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webelement import WebElement
from selenium.webdriver.support.ui import WebDriverWait

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
WAIT_S = 60.0

_WALK = """
const walk = (root, visit) => {
  const it = document.createTreeWalker(root, NodeFilter.SHOW_ELEMENT | NodeFilter.SHOW_TEXT);
  for (let n = it.currentNode; n; n = it.nextNode()) {
    const found = visit(n);
    if (found) return found;
    if (n.shadowRoot) { const inner = walk(n.shadowRoot, visit); if (inner) return inner; }
  }
  return null;
};
const shown = (n) => n.nodeType === Node.TEXT_NODE && n.parentNode
  && !['STYLE', 'SCRIPT', 'TEMPLATE'].includes(n.parentNode.nodeName) && n.textContent.trim();
"""
TEXTS = (
    _WALK
    + """
const out = [];
walk(document.body, (n) => { if (shown(n)) out.push(n.textContent.trim()); return null; });
return out;
"""
)
"""Every visible piece of text on the page, through shadow roots, in document order."""
BY_TEXT = (
    _WALK
    + """
return walk(document.body, (n) => shown(n) && n.textContent.trim() === arguments[0] ? n.parentNode : null);
"""
)
BY_LABEL = (
    _WALK
    + """
return walk(document.body, (n) => n.nodeType === Node.ELEMENT_NODE
  && (n.getAttribute('aria-label') === arguments[0] || n.getAttribute('label') === arguments[0]) ? n : null);
"""
)
HIDE_BROKEN_IMAGES = (
    _WALK
    + """
walk(document.body, (n) => {
  if (n.nodeName === 'IMG' && n.complete && n.naturalWidth === 0) n.style.visibility = 'hidden';
  return null;
});
"""
)
"""Brand images come from brands.home-assistant.io, which this browser cannot reach (by design)."""


def chromium_options(profile: Path) -> webdriver.ChromeOptions:
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for arg in (
        "--headless=new",
        "--window-size=1400,1050",
        "--force-device-scale-factor=1",
        "--lang=en-US",
        f"--user-data-dir={profile}",
        "--disable-dev-shm-usage",
        # Offline: no name resolves but the loopback address; no updates, sync, or background fetches.
        "--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.1",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-default-apps",
        "--no-first-run",
        "--no-pings",
    ):
        options.add_argument(arg)
    if os.geteuid() == 0:
        options.add_argument("--no-sandbox")  # chromium refuses to run as root with its sandbox
    return options


class Browser:
    """One headless chromium session with Home Assistant-aware helpers."""

    def __init__(self, driver: webdriver.Chrome) -> None:
        self.driver = driver

    def wait(self, timeout: float = WAIT_S) -> WebDriverWait[webdriver.Chrome]:
        return WebDriverWait(self.driver, timeout, poll_frequency=0.1)

    def texts(self) -> list[str]:
        return list(self.driver.execute_script(TEXTS))

    def wait_for_texts(self, *wanted: str, timeout: float = WAIT_S) -> list[str]:
        """The page's texts once every one of ``wanted`` is shown."""

        def shown(_: Any) -> list[str] | None:
            texts = self.texts()
            return texts if all(w in texts for w in wanted) else None

        try:
            return self.wait(timeout).until(shown)
        except Exception as exc:
            page, shows = self.driver.current_url, self.texts()
            raise AssertionError(f"{page}: waited {timeout:.0f} s for {wanted}; it shows {shows}") from exc

    def element_with_text(self, text: str) -> WebElement:
        return self.wait().until(lambda d: d.execute_script(BY_TEXT, text))

    def element_with_label(self, label: str) -> WebElement:
        return self.wait().until(lambda d: d.execute_script(BY_LABEL, label))

    def click(self, element: WebElement) -> None:
        """A real pointer click at the element (through whatever icon sits on top of it)."""
        ActionChains(self.driver).move_to_element(element).click().perform()

    def log_in(self, url: str, username: str, password: str) -> None:
        """Home Assistant's login page, as a person fills it in."""
        self.driver.get(url)
        self.wait().until(lambda d: d.find_element(By.NAME, "username")).send_keys(username)
        self.driver.find_element(By.NAME, "password").send_keys(password)
        self.driver.find_element(By.CSS_SELECTOR, "mwc-button").click()
        self.wait().until(lambda d: d.current_url.startswith(f"{url}/lovelace"))

    def screenshot(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.driver.execute_script(HIDE_BROKEN_IMAGES)
        assert self.driver.save_screenshot(str(path)), path


@contextlib.contextmanager
def chromium(workdir: Path) -> Iterator[Browser]:
    """Chromium under chromedriver (profile and driver log in ``workdir``); both stopped by PID at the
    end (quit first, then any survivor)."""
    for exe in (CHROMIUM, CHROMEDRIVER):
        if not exe.exists():
            raise AssertionError(
                f"{exe} is missing: apt-get install chromium chromium-driver (make system-deps)"
            )
    profile = workdir / "chromium-profile"
    profile.mkdir(parents=True)
    service = Service(str(CHROMEDRIVER), log_output=str(workdir / "chromedriver.log"))
    driver = webdriver.Chrome(options=chromium_options(profile), service=service)
    try:
        yield Browser(driver)
    finally:
        tree: list[psutil.Process] = []
        if service.process is not None:
            with contextlib.suppress(psutil.NoSuchProcess):
                root = psutil.Process(service.process.pid)
                tree = [root, *root.children(recursive=True)]  # chromedriver, chromium and its helpers
        with contextlib.suppress(Exception):
            driver.quit()  # closes chromium, then stops chromedriver
        _, alive = psutil.wait_procs(tree, timeout=10)
        for proc in alive:
            with contextlib.suppress(psutil.NoSuchProcess):
                proc.kill()
        psutil.wait_procs(alive, timeout=10)
