"""app.py: the handlers, and the real page driven in a headless Chromium."""

import io
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from face_mogle.labels import PALETTE
from test_cli_sampling import load_script
from sampling_helpers import draw_mask

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM, CHROMEDRIVER = shutil.which("chromium"), shutil.which("chromedriver")


@pytest.fixture(scope="module")
def app():
    return load_script("app")


@pytest.fixture()
def demo(app, pipe):  # noqa: F811
    return app.Demo(pipe, app.find_examples())


def test_examples_are_shipped(app):
    examples = app.find_examples()
    assert "mask" in examples
    path, prompt = examples["mask"]
    img = Image.open(path)
    assert img.mode == "L" and img.size == (128, 128) and prompt
    assert path.stat().st_size < 4096


def test_handlers(demo, tmp_path):
    good = tmp_path / "good.png"
    Image.fromarray(PALETTE[draw_mask(1, 64)], "RGB").save(good)  # palette-coloured masks work too
    image, status = demo.preview(str(good), None)
    assert image.shape == (64, 64, 3) and "good.png" in status and "skin" in status
    face, gates, status = demo.generate(str(good), None, "a face", 3, 2, 3.5, 1.0, 24)
    assert face.size == (24, 24) and gates.size == (24, 24) and status.startswith("Done: mask+text")
    face, gates, status = demo.generate(None, "mask", "", 3, 2, 3.5, 1.0, 16)
    assert face.size == (16, 16) and "mask-only" in status and "example 'mask'" in status
    face, _, status = demo.generate(None, None, "a face", 3, 2, 3.5, 1.0, 16)
    assert face.size == (16, 16) and "text-only" in status

    bad = tmp_path / "bad.png"
    bad.write_bytes(b"\x89PNG\r\n broken")
    with pytest.warns(UserWarning):  # gr.Warning outside a page request is a Python warning
        assert demo.preview(str(bad), None)[1].startswith("**Mask not usable:**")
    with pytest.warns(UserWarning):
        face, gates, status = demo.generate(str(bad), None, "a face", 3, 2, 3.5, 1.0, 16)
    assert face is None and status.startswith("**Error:**") and "bad.png" in status
    with pytest.warns(UserWarning):
        status = demo.generate(None, None, "a face", 3, 2, 3.5, 1.0, 20)[2]
    assert "multiple of 8" in status
    with pytest.warns(UserWarning):
        status = demo.generate(None, None, "a face", None, 2, 3.5, 1.0, 16)[2]  # an emptied number box
    assert status.startswith("**Error:** invalid setting")


def test_build_demo(app, pipe):  # noqa: F811
    import gradio as gr

    assert isinstance(app.build_demo(pipe), gr.Blocks)


def test_missing_run_is_one_line(tmp_path):
    res = subprocess.run([sys.executable, str(ROOT / "app.py"), "--run", str(tmp_path / "nope")],
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 2 and "Traceback" not in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1 and "nope" in res.stderr


# ---------------------------------------------------------------------------------------------
# The page in a real browser


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture()
def server(tiny_run, tmp_path):  # noqa: F811
    port = free_port()
    env = dict(os.environ, GRADIO_TEMP_DIR=str(tmp_path / "gradio"), HF_HUB_OFFLINE="1", PYTHONUNBUFFERED="1")
    log = open(tmp_path / "server.log", "w+")
    proc = subprocess.Popen([sys.executable, str(ROOT / "app.py"), "--run", str(tiny_run), "--port", str(port)],
                            cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/"
    deadline = time.time() + 180
    try:
        while True:
            if proc.poll() is not None:
                log.seek(0)
                pytest.fail(f"app.py exited with {proc.returncode}: {log.read()[-2000:]}")
            try:
                if urllib.request.urlopen(url, timeout=5).status == 200:
                    break
            except OSError:
                pass
            if time.time() > deadline:
                pytest.fail("app.py did not serve its page within 180 s")
            time.sleep(0.5)
        yield url, tmp_path / "server.log"
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


@pytest.fixture()
def browser():
    if not CHROMIUM or not CHROMEDRIVER:
        pytest.skip("chromium / chromedriver not installed (apt-get install -y chromium chromium-driver)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    profile = tempfile.mkdtemp(prefix="chromium-profile-")
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-dev-shm-usage", f"--user-data-dir={profile}", "--window-size=1280,2200"):
        opts.add_argument(flag)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=opts)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


def test_page_generates_in_a_browser(server, browser, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import WebDriverWait

    url, log = server
    assert "127.0.0.1" in log.read_text()  # bound to localhost only
    wait = WebDriverWait(browser, 120)
    browser.get(url)
    wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#generate"))
    status = lambda: browser.find_element(By.CSS_SELECTOR, "#status").text  # noqa: E731

    def fetch(selector) -> Image.Image:
        src = browser.find_element(By.CSS_SELECTOR, f"{selector} img").get_attribute("src")
        with urllib.request.urlopen(src, timeout=30) as r:
            return Image.open(io.BytesIO(r.read()))

    # Upload a mask; the page shows it coloured with the palette.
    mask = tmp_path / "upload.png"
    Image.fromarray(draw_mask(2, 64), "L").save(mask)
    browser.find_element(By.CSS_SELECTOR, "#mask_upload input[type=file]").send_keys(str(mask))
    wait.until(lambda d: "upload.png" in status())
    wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#mask_view img"))
    shown = np.asarray(fetch("#mask_view").convert("RGB"))
    assert shown.shape == (64, 64, 3) and (shown == PALETTE[1]).all(-1).any()  # skin in its palette colour

    # Ask for 24 px, 2 steps; generate; the result decodes at that size.
    for field, value in (("#size input", "24"), ("#steps input[type=number]", "2")):
        box = browser.find_element(By.CSS_SELECTOR, field)
        box.send_keys(Keys.CONTROL, "a")
        box.send_keys(value)
        box.send_keys(Keys.TAB)
    browser.find_element(By.CSS_SELECTOR, "#generate").click()
    wait.until(lambda d: status().startswith("Done"))
    assert "24x24" in status() and "2 steps" in status() and "upload.png" in status()
    assert fetch("#result").size == (24, 24)
    assert fetch("#gates").size == (24, 24)

    # A broken upload: a readable message in the page, no traceback.
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n definitely not an image")
    browser.find_element(By.CSS_SELECTOR, "#mask_upload button[aria-label=Clear]").click()
    wait.until(lambda d: "text-only" in status())
    wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#mask_upload input[type=file]"))
    browser.find_element(By.CSS_SELECTOR, "#mask_upload input[type=file]").send_keys(str(bad))
    wait.until(lambda d: "Mask not usable" in status())
    browser.find_element(By.CSS_SELECTOR, "#generate").click()
    wait.until(lambda d: status().startswith("Error"))
    assert "broken.png" in status() and "unreadable or corrupt image" in status()
    assert "Traceback" not in browser.page_source
