"""The web chat (``python -m lavislite.webui``) driven by a real headless browser.

The app runs in a subprocess on a free local port with the demo run's model;
Debian's chromium (installed here with apt when missing, as CI can: it runs as
root) is driven through selenium: upload an image, ask two questions, read the
replies from the page, reset, ask again. The replies must equal ``model.chat``
run in this process on the same conversation (greedy).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest

from conftest import DEMO_DATA, REPO, free_port, run_env

IMAGE = str(DEMO_DATA / "images" / "shape_288.jpg")
Q1 = "What colour is the shape?"
Q2 = "Say it again."  # answered differently without turn 1 in the history (see test_chat_cli)
MAX_NEW_TOKENS = 24

CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--no-first-run",
    # No internet here: without these chromium keeps trying (and failing) to reach its services.
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--window-size=1280,1000",
]


def chromium_paths() -> tuple[str, str]:
    """``(chromium, chromedriver)``, apt-installed first when missing and this process may.

    Skips (saying why) only where no browser can be had: not root, no apt-get,
    or the install failed (no package mirror reachable).
    """
    def find() -> tuple[str | None, str | None]:
        return shutil.which("chromium") or shutil.which("chromium-browser"), shutil.which("chromedriver")

    browser, driver = find()
    if browser and driver:
        return browser, driver
    if not shutil.which("apt-get"):
        pytest.skip("chromium / chromedriver missing and no apt-get to install them")
    if os.geteuid() != 0:
        pytest.skip("chromium / chromedriver missing; installing them needs root: apt-get install chromium chromium-driver")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    log = []
    for cmd in (["apt-get", "update", "-q"], ["apt-get", "install", "-y", "-q", "chromium", "chromium-driver"]):
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
        log.append(proc.stdout[-1500:] + proc.stderr[-1500:])
        if proc.returncode != 0:
            pytest.skip(f"chromium could not be installed ({' '.join(cmd)} exited {proc.returncode}): {log[-1][-800:]}")
    browser, driver = find()
    if not (browser and driver):
        pytest.skip(f"apt-get installed chromium but no chromium / chromedriver on PATH: {log[-1][-800:]}")
    return browser, driver


@pytest.fixture(scope="module")
def webui(demo_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The web chat on a free local port with the demo run's model; its URL. Stopped afterwards."""
    port = free_port()
    log_path = tmp_path_factory.mktemp("webui") / "webui.log"
    env = {**run_env(), "GRADIO_ANALYTICS_ENABLED": "False", "HF_HUB_OFFLINE": "1"}
    cmd = [sys.executable, "-m", "lavislite.webui", "--checkpoint", str(demo_run), "--host", "127.0.0.1", "--port", str(port), "--max-new-tokens", str(MAX_NEW_TOKENS)]
    with open(log_path, "w") as log:
        # Output into a file: a pipe nobody reads would fill and stall the server.
        proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/"
    try:
        deadline = time.time() + 180
        while True:
            if proc.poll() is not None:
                pytest.fail(f"the web chat exited with {proc.returncode}:\n{log_path.read_text()[-3000:]}")
            try:
                with urllib.request.urlopen(url, timeout=2) as resp:
                    if resp.status == 200:
                        break
            except OSError:
                pass
            if time.time() > deadline:
                pytest.fail(f"the web chat did not answer on {url}:\n{log_path.read_text()[-3000:]}")
            time.sleep(0.5)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    assert "Traceback" not in log_path.read_text(), log_path.read_text()[-3000:]


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """Headless chromium under selenium, with a fresh profile."""
    chromium, chromedriver = chromium_paths()
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in [*CHROMIUM_FLAGS, f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}"]:
        options.add_argument(flag)
    # An explicit driver path: selenium's own driver manager would try to download one.
    driver = webdriver.Chrome(service=Service(chromedriver), options=options)
    try:
        yield driver
    finally:
        driver.quit()


def wait_for(condition: Callable[[], Any], what: str, timeout: float = 60) -> Any:
    """Polls ``condition`` until it gives a true value; fails naming ``what``."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.2)
    pytest.fail(f"timed out after {timeout}s waiting for {what}")


class ChatPage:
    """The web chat as a user sees it, through the elements' ids."""

    def __init__(self, driver: Any, url: str) -> None:
        from selenium.webdriver.common.by import By

        self.by = By
        self.driver = driver
        driver.get(url)
        wait_for(lambda: driver.find_elements(By.CSS_SELECTOR, "#message textarea"), "the message box")

    def upload(self, path: str) -> None:
        self.driver.find_element(self.by.CSS_SELECTOR, "#image input[type=file]").send_keys(path)
        # The upload finishes when the preview shows; a message sent earlier would go without the image.
        wait_for(lambda: self.driver.find_elements(self.by.CSS_SELECTOR, "#image img"), "the uploaded image's preview")

    def replies(self) -> list[str]:
        """The assistant messages' text, read in one script call (the chat re-renders while a reply streams)."""
        return list(self.driver.execute_script(
            "return Array.from(document.querySelectorAll('#chatbot [data-testid=\"bot\"]')).map(e => e.innerText.trim())"
        ))

    def box_enabled(self) -> bool:
        return bool(self.driver.execute_script("const t = document.querySelector('#message textarea'); return t !== null && !t.disabled"))

    def box(self) -> Any:
        return self.driver.find_element(self.by.CSS_SELECTOR, "#message textarea")

    def ask(self, text: str) -> str:
        """Sends ``text`` with Enter and returns the reply once it is complete (the box unlocks)."""
        from selenium.webdriver.common.keys import Keys

        before = len(self.replies())
        box = self.box()
        box.send_keys(text)
        box.send_keys(Keys.ENTER)
        wait_for(lambda: len(self.replies()) == before + 1 and self.box_enabled(), f"the reply to {text!r}")
        return self.replies()[-1]

    def reset(self) -> None:
        self.driver.find_element(self.by.CSS_SELECTOR, "#reset").click()
        wait_for(lambda: not self.replies() and not self.driver.find_elements(self.by.CSS_SELECTOR, "#image img"), "the reset")


def test_two_turn_conversation_in_a_browser(webui: str, browser: Any, demo_run: Path) -> None:
    from lavislite.models.release import load_from_checkpoint

    page = ChatPage(browser, webui)
    page.upload(IMAGE)
    reply1 = page.ask(Q1)
    reply2 = page.ask(Q2)
    # The uploaded image went with the first message (shown above it), once.
    assert len(browser.find_elements(page.by.CSS_SELECTOR, '#chatbot [data-testid="user"] img')) == 1
    page.reset()
    page.upload(IMAGE)
    reply3 = page.ask(Q1)

    model, _, _ = load_from_checkpoint(str(demo_run))
    turn1 = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "\n" + Q1}]}]
    expected1 = model.chat([IMAGE], turn1, max_new_tokens=MAX_NEW_TOKENS)
    turn2 = [*turn1, {"role": "assistant", "content": expected1}, {"role": "user", "content": Q2}]
    expected2 = model.chat([IMAGE], turn2, max_new_tokens=MAX_NEW_TOKENS)
    assert expected1 and expected2
    assert [reply1, reply2, reply3] == [expected1, expected2, expected1]


def test_webui_without_gradio_is_a_clean_error(tmp_path: Path) -> None:
    """Without gradio the web chat says how to install it (before loading any model); nothing else needs it."""
    blocker = tmp_path / "blocker"
    (blocker / "gradio").mkdir(parents=True)
    (blocker / "gradio" / "__init__.py").write_text("raise ImportError(\"No module named 'gradio'\")\n")
    env = run_env()
    env["PYTHONPATH"] = os.pathsep.join([str(blocker), env["PYTHONPATH"]])
    start = time.time()
    proc = subprocess.run(
        [sys.executable, "-m", "lavislite.webui", "--checkpoint", str(tmp_path / "never_read")],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert 'error: the web chat needs gradio: pip install -e ".[demo]"' in proc.stderr and "Traceback" not in proc.stderr
    assert time.time() - start < 60
    code = "import sys, lavislite, lavislite.chat, lavislite.webui, lavislite.train, lavislite.evaluate; print('gradio' in sys.modules)"
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=run_env(), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and proc.stdout.strip() == "False", proc.stderr[-3000:]
