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

from face_mogle.labels import CLASSES, PALETTE
from test_cli_sampling import load_script
from sampling_helpers import draw_mask, make_identity_run, save_reference_face

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
    assert "Not read" not in status
    # a word the run's T5 tokenizer lacks is named on the status line (the face is still made)
    unread = demo.pipe.unread_words("a face \u00e9t\u00e9")
    assert unread, "the test tokenizer knows every character: the check tests nothing"
    face, _, status = demo.generate(str(good), None, "a face \u00e9t\u00e9", 3, 2, 3.5, 1.0, 16)
    assert face.size == (16, 16) and status.endswith(f" Not read by the text encoder: {', '.join(unread)}.")
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


def component(page, elem_id):
    found = [b for b in page.blocks.values() if getattr(b, "elem_id", None) == elem_id]
    assert len(found) == 1, elem_id
    return found[0]


def test_build_demo(app, pipe, identity_pipe):  # noqa: F811
    import gradio as gr

    page = app.build_demo(pipe)
    assert isinstance(page, gr.Blocks)
    assert isinstance(app.build_demo(pipe, edit_example=None), gr.Blocks)  # no example: no example button
    # a run without identity: no reference-face upload, and a note saying why
    assert not component(page, "identity_upload").visible and not component(page, "identity_view").visible
    assert "trained without identity" in component(page, "identity_note").value
    page = app.build_demo(identity_pipe)
    assert component(page, "identity_upload").visible and component(page, "identity_view").visible
    assert "upload a reference face" in component(page, "identity_note").value


# ---------------------------------------------------------------------------------------------
# Identity in the Generate tab (issue #31): a reference face with the mask and the prompt


@pytest.fixture(scope="module")
def identity_run(tmp_path_factory):
    """A tiny run with identity tokens and its own SynthFaces encoder (see sampling_helpers)."""
    return make_identity_run(tmp_path_factory.mktemp("app-identity"))


@pytest.fixture(scope="module")
def identity_pipe(identity_run):
    from face_mogle.pipeline import FaceMoGLEPipeline

    return FaceMoGLEPipeline.from_run(identity_run)


def test_identity_handlers(app, identity_pipe, demo, tmp_path):
    handlers = app.Demo(identity_pipe, app.find_examples())
    ref = save_reference_face(tmp_path / "ref.png", seed=5)
    grey = tmp_path / "grey.png"
    Image.new("RGB", (96, 96), (128, 128, 128)).save(grey)
    mask = tmp_path / "mask.png"
    Image.fromarray(draw_mask(1, 64), "L").save(mask)
    image, status = handlers.identity_preview(str(ref))
    assert image.size == (96, 96) and status == "Reference face ref.png: 96x96, a face found."
    assert handlers.identity_preview(None)[0] is None
    with pytest.warns(UserWarning):
        image, status = handlers.identity_preview(str(grey))
    assert image is None and status.startswith("**Reference face not usable:** grey.png: no face found")

    face, gates, status = handlers.generate(str(mask), None, "a face", 3, 2, 3.5, 1.0, 24, identity_file=str(ref))
    assert status.startswith("Done: mask+text+identity, mask mask.png, reference face ref.png, 24x24"), status
    want = identity_pipe("a face", str(mask), seeds=[3], steps=2, size=24, identities=[str(ref)])
    assert np.array_equal(np.asarray(face), np.asarray(want.images[0])) and gates.size == (24, 24)
    plain = handlers.generate(str(mask), None, "a face", 3, 2, 3.5, 1.0, 24)
    assert plain[2].startswith("Done: mask+text, ") and not np.array_equal(np.asarray(plain[0]), np.asarray(face))
    with pytest.warns(UserWarning):
        face, _, status = handlers.generate(None, None, "a face", 3, 2, 3.5, 1.0, 24, identity_file=str(grey))
    assert face is None and status.startswith("**Error:** grey.png: no face found") and "\n" not in status
    # a run without identity refuses a reference (its page hides the upload; the handler checks anyway)
    with pytest.warns(UserWarning):
        status = demo.generate(None, None, "a face", 3, 2, 3.5, 1.0, 16, identity_file=str(ref))[2]
    assert status.startswith("**Error:** this run was trained without identity")


# ---------------------------------------------------------------------------------------------
# The Edit tab's handlers

HAIR = CLASSES.index("hair")


@pytest.fixture()
def editor(app, pipe):  # noqa: F811
    return app.EditDemo(pipe, app.find_edit_example())


def hair_into_background(app, painting, rows=0.25):
    """The editor's value with hair painted over the background in the top `rows` of the canvas, as the
    browser hands it over: RGBA layer (with a half-transparent, anti-aliased stroke edge) + composite."""
    background = painting["background"]
    under = app.labels_from_painting(background)
    h = int(background.shape[0] * rows)
    layer = np.zeros((*background.shape[:2], 4), np.uint8)
    stroke = np.zeros(background.shape[:2], bool)
    stroke[:h] = under[:h] == 0
    layer[stroke] = (*PALETTE[HAIR], 255)
    edge = np.zeros_like(stroke)
    edge[h:h + 2] = under[h:h + 2] == 0
    layer[edge] = (*PALETTE[HAIR], 100)  # under half opaque: not painted
    alpha = layer[..., 3:].astype(np.float32) / 255
    composite = (alpha * layer[..., :3] + (1 - alpha) * background[..., :3]).round().astype(np.uint8)
    return {"background": background, "layers": [layer], "composite": composite}, stroke


def test_examples_for_editing_are_shipped(app):
    face, mask, caption = app.find_edit_example()
    assert Image.open(face).size == (128, 128) and Image.open(mask).mode == "L" and caption
    assert app.find_edit_example(ROOT / "nowhere") is None


def test_labels_from_painting(app):
    labels = np.arange(len(CLASSES), dtype=np.uint8).repeat(3)[None].repeat(4, 0)  # every class
    exact = PALETTE[labels]
    assert np.array_equal(app.labels_from_painting(exact), labels)
    rgba = np.concatenate([exact, np.full((*labels.shape, 1), 7, np.uint8)], -1)  # alpha is ignored
    assert np.array_equal(app.labels_from_painting(rgba), labels)
    # slightly off (lossy export, blending): the nearest palette colour, never an unknown class
    noise = np.random.default_rng(0).integers(-12, 13, exact.shape)  # |projection| <= 12*sqrt(3) < 51/2
    off = np.clip(exact.astype(int) + noise, 0, 255).astype(np.uint8)
    assert (off != exact).any() and np.array_equal(app.labels_from_painting(off), labels)
    assert app.labels_from_painting(np.array([[[190, 30, 10], [0, 0, 110]]], np.uint8)).tolist() == [[1, 12]]
    with pytest.raises(ValueError):
        app.labels_from_painting(np.zeros((4, 4), np.uint8))


def test_painted_labels_take_the_strokes_not_their_blended_edges(app):
    from face_mogle.data.masks import load_label_map

    source = load_label_map(app.find_edit_example()[1])  # 128 px, painted at 512
    painting, stroke = hair_into_background(app, app.editor_value(source))
    edited, changed = app.painted_labels(painting, source)
    want = source.copy()
    want[app.resize_labels(stroke.astype(np.uint8), source.shape) > 0] = HAIR
    assert changed > 0 and np.array_equal(edited, want)
    assert set(np.unique(edited)) == set(np.unique(source))  # no stray class from the blended edge
    # the blended edge read from the composite alone would be a third class (l_lip); from the layer it is not
    assert (app.labels_from_painting(painting["composite"]) == CLASSES.index("l_lip")).any()
    # nothing painted, or no editor value: the source itself
    assert app.painted_labels(app.editor_value(source), source)[1] == 0
    assert app.painted_labels(None, source)[1] == 0
    # a client without layers: the composite's changes against the background
    exact = dict(painting, layers=[])
    exact["composite"] = app.editor_value(want)["composite"]
    assert np.array_equal(app.painted_labels(exact, source)[0], want)


def test_edit_the_example_with_a_painted_mask(app, editor, tmp_path):
    from face_mogle.data.masks import load_label_map, save_label_map
    from face_mogle.editing import dilate, load_face

    face, face_view, source_file, source, painting, prompt, source_prompt, edited_file, status = editor.load_example()
    face_path, mask_path, caption = app.find_edit_example()
    assert face == str(face_path) and face_view.shape == (128, 128, 3) and source_file is None and edited_file is None
    assert np.array_equal(source["labels"], load_label_map(mask_path)) and prompt == source_prompt == caption
    assert painting["background"].shape == (app.EDITOR_SIZE, app.EDITOR_SIZE, 3) and "Example loaded" in status

    painting, _ = hair_into_background(app, painting)
    margin = 2
    original, result, area, status, new_source, new_painting = editor.edit(
        face, source, "synthfaces", painting, None, prompt, source_prompt, [], 0.8, "ode", margin, 3, 2, 32)
    assert status.startswith("Done: edit, ") and "% of the image editable" in status, status
    # generated at 32, returned at the face's own 128
    assert "128x128 (generated at 32)" in status and "painted mask (" in status and "the example's mask" in status
    assert result.size == original.size == area.size == (128, 128)
    target = app.painted_labels(painting, source["labels"])[0]
    changed = load_label_map(source["labels"], 32) != load_label_map(target, 32)
    assert changed.any() and not dilate(changed, margin).all()
    assert f"{changed.mean():.0%} of the image editable" in status
    full = load_face(face)
    assert np.array_equal(np.asarray(original), full)
    # paste-back at the input's resolution: the input itself outside the changed pixels and the margin's blend
    changed = np.repeat(np.repeat(changed, 4, 0), 4, 1)
    reach = dilate(changed, margin * 4)
    assert np.array_equal(np.asarray(result)[~reach], full[~reach])
    assert not np.array_equal(np.asarray(result)[changed], full[changed])
    shown = np.asarray(area)
    assert np.array_equal(shown[changed], full[changed]) and (shown[~reach] != full[~reach]).any()
    assert new_source == {"__type__": "update"} and new_painting == {"__type__": "update"}  # kept

    # an uploaded edited mask replaces the painting
    save_label_map(target, tmp_path / "edited.png")
    assert "edited.png" in editor.check_edited(str(tmp_path / "edited.png"))
    status = editor.edit(face, source, "synthfaces", None, str(tmp_path / "edited.png"), prompt, "",
                         [], 0.8, "noise", margin, 3, 2, 32)[3]
    assert status.startswith("Done: edit") and "edited mask edited.png" in status and "inversion noise" in status


def test_edit_parses_the_face(app, editor):
    from face_mogle.data.masks import load_label_map

    face_path, mask_path, caption = app.find_edit_example()
    face = np.asarray(Image.open(face_path).convert("RGB"))
    source, painting, status = editor.parse(face, "synthfaces")
    assert np.array_equal(source["labels"], load_label_map(mask_path)) and "parsed by synthfaces" in status
    assert painting["background"].shape == (app.EDITOR_SIZE, app.EDITOR_SIZE, 3)
    # no source mask at Edit time: the face is parsed then, and the page gets the parsed mask
    original, result, area, status, new_source, new_painting = editor.edit(
        face, None, "synthfaces", None, None, "She has red hair.", caption, ["hair"], 1.0, "noise", 0, 1, 2, 32)
    assert status.startswith("Done: edit") and "parsed by synthfaces" in status and "regions hair" in status
    assert "a text edit" in status and result.size == (128, 128)
    assert np.array_equal(new_source["labels"], source["labels"]) and "background" in new_painting


def test_edit_errors_are_one_line(app, pipe, tmp_path):  # noqa: F811
    from face_mogle.data.masks import load_label_map

    editor = app.EditDemo(pipe, app.find_edit_example(), weights_dir=tmp_path / "no-weights")
    face_path, mask_path, caption = app.find_edit_example()
    face = np.asarray(Image.open(face_path).convert("RGB"))
    source = {"labels": load_label_map(mask_path), "name": "mask.png"}
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"\x89PNG\r\n broken")
    settings = dict(parser="synthfaces", painting=None, edited_file=None, prompt="A face.", source_prompt="",
                    regions=[], strength=0.8, inversion="ode", margin=2, seed=1, steps=2, size=32)
    cases = [
        (dict(face=None), "no face"),
        (dict(face=np.zeros((32, 40, 3), np.uint8)), "must be square"),
        (dict(source=None, parser="segformer"), "upload the face's own mask instead"),
        (dict(edited_file=str(bad)), "bad.png"),
        (dict(regions=["beard"]), "unknown region 'beard'"),
        (dict(strength=0), "strength must be in (0, 1]"),
        (dict(size=20), "multiple of 8"),
        (dict(seed=None), "invalid setting"),
    ]
    for change, message in cases:
        kwargs = {**settings, "face": face, "source": source, **change}
        with pytest.warns(UserWarning):  # gr.Warning outside a page request
            out = editor.edit(**kwargs)
        status = out[3]
        assert out[1] is None and status.startswith("**Error:**") and message in status, (change, status)
        assert "\n" not in status and "--source_mask" not in status and "Traceback" not in status
    with pytest.warns(UserWarning):
        assert editor.parse(face, "segformer")[2].startswith("**Error:** no source mask given")
    with pytest.warns(UserWarning):
        assert editor.parse(None, "synthfaces")[2].startswith("**Error:** no face")
    with pytest.warns(UserWarning):
        assert editor.load_source(str(bad))[2].startswith("**Mask not usable:**")
    with pytest.warns(UserWarning):
        assert editor.check_edited(str(bad)).startswith("**Mask not usable:**")
    assert "not square" in editor.new_face(np.zeros((32, 40, 3), np.uint8))[4]
    # a bad face upload gives its reason (gradio's own decoding said a bare "Error")
    with pytest.warns(UserWarning):
        view, *_, status = editor.new_face(str(bad))
    assert view is None and status.startswith("**Face not usable:**") and "bad.png: unreadable or corrupt" in status
    from test_image_files import declared_png

    with pytest.warns(UserWarning):
        status = editor.new_face(str(declared_png(tmp_path / "giant.png", 8000, 8000)))[4]
    assert "giant.png: declares 8000x8000 pixels" in status
    with pytest.warns(UserWarning):
        status = editor.edit(**{**settings, "face": str(tmp_path / "giant.png"), "source": source})[3]
    assert status.startswith("**Error:**") and "declares 8000x8000" in status
    with pytest.warns(UserWarning):  # an uploaded mask too
        assert "declares 8000x8000" in editor.load_source(str(tmp_path / "giant.png"))[2]
    view, *_, status = editor.new_face(str(face_path))
    assert view.shape == (128, 128, 3) and status.startswith("Face 128x128 loaded")


def test_serving_limits(app, pipe):  # noqa: F811
    demo = app.build_demo(pipe)
    assert demo.delete_cache == app.KEEP_FILES and demo._queue.max_size == app.QUEUE_SIZE


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
def server(identity_run, tmp_path):
    """app.py serving a run with identity: the Generate tab shows the reference-face upload; without a
    reference the run samples exactly as one without identity."""
    port = free_port()
    env = dict(os.environ, GRADIO_TEMP_DIR=str(tmp_path / "gradio"), HF_HUB_OFFLINE="1", PYTHONUNBUFFERED="1")
    log = open(tmp_path / "server.log", "w+")
    proc = subprocess.Popen([sys.executable, str(ROOT / "app.py"), "--run", str(identity_run), "--port", str(port)],
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


def fetch_image(browser, selector) -> Image.Image:
    """The image an <img> under `selector` shows, as the server sends it."""
    from selenium.webdriver.common.by import By

    src = browser.find_element(By.CSS_SELECTOR, f"{selector} img").get_attribute("src")
    with urllib.request.urlopen(src, timeout=30) as r:
        return Image.open(io.BytesIO(r.read()))


def type_into(browser, fields) -> None:
    """Replace the text of each (CSS selector, value) box, then leave it (gradio reads it on blur)."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    for field, value in fields:
        box = browser.find_element(By.CSS_SELECTOR, field)
        box.send_keys(Keys.CONTROL, "a")
        box.send_keys(value)
        box.send_keys(Keys.TAB)


def test_page_generates_in_a_browser(server, browser, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    url, log = server
    assert "127.0.0.1" in log.read_text()  # bound to localhost only
    wait = WebDriverWait(browser, 120)
    browser.get(url)
    wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#generate"))
    status = lambda: browser.find_element(By.CSS_SELECTOR, "#status").text  # noqa: E731

    fetch = lambda selector: fetch_image(browser, selector)  # noqa: E731

    # Upload a mask; the page shows it coloured with the palette.
    mask = tmp_path / "upload.png"
    Image.fromarray(draw_mask(2, 64), "L").save(mask)
    browser.find_element(By.CSS_SELECTOR, "#mask_upload input[type=file]").send_keys(str(mask))
    wait.until(lambda d: "upload.png" in status())
    wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#mask_view img"))
    shown = np.asarray(fetch("#mask_view").convert("RGB"))
    assert shown.shape == (64, 64, 3) and (shown == PALETTE[1]).all(-1).any()  # skin in its palette colour

    # Ask for 24 px, 2 steps; generate; the result decodes at that size.
    type_into(browser, (("#size input", "24"), ("#steps input[type=number]", "2")))
    browser.find_element(By.CSS_SELECTOR, "#generate").click()
    wait.until(lambda d: status().startswith("Done"))
    assert "24x24" in status() and "2 steps" in status() and "upload.png" in status()
    assert fetch("#result").size == (24, 24)
    assert fetch("#gates").size == (24, 24)

    # A reference face: shown once its face is found; the next face is that person.
    ref = save_reference_face(tmp_path / "person.png", seed=5)
    browser.find_element(By.CSS_SELECTOR, "#identity_upload input[type=file]").send_keys(str(ref))
    wait.until(lambda d: "Reference face person.png" in status())
    assert "a face found" in status() and fetch("#identity_view").size == (96, 96)
    browser.find_element(By.CSS_SELECTOR, "#generate").click()
    wait.until(lambda d: status().startswith(("Done", "Error")))
    assert status().startswith("Done: mask+text+identity") and "reference face person.png" in status(), status()
    assert fetch("#result").size == (24, 24)
    browser.find_element(By.CSS_SELECTOR, "#identity_upload button[aria-label=Clear]").click()
    wait.until(lambda d: "No reference face" in status())

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


def test_page_edits_in_a_browser(server, browser, tmp_path):
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    from face_mogle.data.masks import load_label_map, save_label_map

    url, _ = server
    wait = WebDriverWait(browser, 120)
    browser.get(url)
    wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#tab_edit-button"))
    browser.find_element(By.CSS_SELECTOR, "#tab_edit-button").click()
    wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#edit_example"))
    status = lambda: browser.find_element(By.CSS_SELECTOR, "#edit_status").text  # noqa: E731

    fetch = lambda selector: fetch_image(browser, selector)  # noqa: E731

    # The example: the face, its mask on the painting canvas, its caption as the prompt.
    browser.find_element(By.CSS_SELECTOR, "#edit_example").click()
    wait.until(lambda d: "Example loaded" in status())
    wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#edit_face_view img"))
    assert fetch("#edit_face_view").size == (128, 128)
    face, mask, caption = load_script("app").find_edit_example()
    assert browser.find_element(By.CSS_SELECTOR, "#edit_prompt textarea").get_attribute("value") == caption

    # Paint a hair stroke (the brush's default colour) from the top of the hair over the background to
    # its right. The mask is fitted to the canvas height and centred; a stroke must start on the image.
    wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#edit_painting canvas"))
    time.sleep(1)  # the canvas draws its background
    canvas = browser.find_element(By.CSS_SELECTOR, "#edit_painting canvas")
    step = int(0.19 * canvas.size["height"])
    ActionChains(browser).move_to_element_with_offset(canvas, 0, int(-0.33 * canvas.size["height"])).click_and_hold() \
        .move_by_offset(step, 0).move_by_offset(step, 0).move_by_offset(0, step).move_by_offset(0, step) \
        .release().perform()

    type_into(browser, (("#edit_size input", "32"), ("#edit_steps input[type=number]", "2")))
    browser.find_element(By.CSS_SELECTOR, "#edit_run").click()
    wait.until(lambda d: status().startswith(("Done", "Error")))
    assert status().startswith("Done: edit, ") and "(generated at 32)" in status() and "2 steps" in status(), status()
    assert "painted mask (" in status() and "100% of the image editable" not in status(), status()
    assert fetch("#edit_result").size == (128, 128) and fetch("#edit_original").size == (128, 128)
    assert fetch("#edit_area").size == (128, 128)

    # An uploaded edited mask replaces the painting.
    edited = load_label_map(mask)
    edited[:40][edited[:40] == 0] = CLASSES.index("hair")
    save_label_map(edited, tmp_path / "more_hair.png")
    browser.find_element(By.CSS_SELECTOR, "#edit_mask_upload input[type=file]").send_keys(str(tmp_path / "more_hair.png"))
    wait.until(lambda d: "instead of the painting" in status())
    browser.find_element(By.CSS_SELECTOR, "#edit_run").click()
    wait.until(lambda d: status().startswith(("Done", "Error")))
    assert status().startswith("Done: edit") and "edited mask more_hair.png" in status(), status()
    assert fetch("#edit_result").size == (128, 128)
    assert "Traceback" not in browser.page_source
