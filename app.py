"""Face-MoGLE web demo (gradio), two tabs:

  Generate  a face mask + a prompt → a face, and the MoGLE expert map; with a run trained with
            identity, also an optional reference face: the face generated is that person;
  Edit      a real face + its mask → the face with its mask painted over (or its description
            rewritten): only what changed is regenerated (face_mogle.editing, as inference.py --image).

    python app.py                                  # the shipped tiny model, http://127.0.0.1:7860
    python app.py --run runs/face-mogle --port 7861
    python app.py --host 0.0.0.0                   # listen on every interface (your network)
    python app.py --share                          # a public gradio.live link (needs internet)
    python app.py --weights_dir checkpoints/eval   # where the Edit tab's segformer face parser lives

Masks are label PNGs (values 0..18) or images painted in the CelebAMask-HQ palette; they are
uploaded as files, so no lossy re-encoding touches the labels. In the Edit tab the source mask
(uploaded, parsed from the face by segformer or synthfaces, or the example's) is shown on a
painting canvas in palette colours; the brush paints only palette colours, and the strokes become
labels by the nearest palette colour (half-transparent stroke edges are left out), so painting
never invents a class. An uploaded edited mask replaces the painting. assets/examples/edit/
holds the example: face.png, its mask.png and its caption, prompt.txt.
"""

from __future__ import annotations

import argparse
import inspect
import os
import sys
import traceback
from pathlib import Path
from typing import Optional

from face_mogle.cli import add_memory_arguments, memory_overrides

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # nothing leaves the machine
os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")


class OneLineParser(argparse.ArgumentParser):
    """Usage mistakes are one line on stderr (exit 2), like every other input error."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


HERE = Path(__file__).resolve().parent
DEFAULT_RUN = HERE / "checkpoints" / "face-mogle-tiny"
EXAMPLES_DIR = HERE / "assets" / "examples"
TEXT_ONLY = "(none: text-only mode)"
DEFAULT_WEIGHTS_DIR = HERE / "checkpoints" / "eval"  # the eval suite's models (the segformer face parser)
# Serving limits: an upload past MAX_UPLOAD is refused by gradio; at most QUEUE_SIZE requests wait for
# the one worker; uploads and outputs are deleted KEEP_FILES[1] s after they were made (checked every
# KEEP_FILES[0] s) from the demo's own temp folder, which goes when the demo stops.
MAX_UPLOAD = "20mb"
QUEUE_SIZE = 16
KEEP_FILES = (600, 3600)


def unread_note(pipe, prompt) -> str:
    """A status-line sentence naming the prompt words the run's T5 does not read ("" if none): the tiny
    demo encoder knows only SynthFaces caption words."""
    unread = pipe.unread_words(prompt or "")
    return f" Not read by the text encoder: {', '.join(unread)}." if unread else ""


def find_examples(folder: Path = EXAMPLES_DIR) -> dict[str, tuple[Path, str]]:
    """name → (mask PNG, prompt): mask.png with prompt.txt, and any NAME.png with NAME.txt."""
    examples = {}
    for png in sorted(folder.glob("*.png")):
        txt = folder / ("prompt.txt" if png.stem == "mask" else png.stem + ".txt")
        if txt.is_file():
            examples[png.stem] = (png, txt.read_text().strip())
    return examples


def upload_path(file):
    """An uploaded file as gradio hands it over → its path (or None)."""
    if isinstance(file, dict):  # some gradio versions hand over {"path": ...}
        file = file.get("path") or file.get("name")
    if file is not None and not isinstance(file, (str, os.PathLike)):
        file = getattr(file, "name", file)  # a tempfile-like wrapper (older gradio)
    return file


class Demo:
    """The handlers, separate from the page so they can be tested without a browser."""

    def __init__(self, pipe, examples: dict[str, tuple[Path, str]]):
        self.pipe = pipe
        self.examples = examples

    def _mask_path(self, mask_file, example):
        """The chosen mask file (upload first, then the picked example), or None."""
        return upload_path(mask_file) if mask_file else (self.examples[example][0] if example in self.examples else None)

    def _labels(self, mask_file, example):
        """The chosen mask as labels, or None."""
        from face_mogle.data.masks import load_label_map

        path = self._mask_path(mask_file, example)
        if path is None:
            return None, None
        shown = Path(path).name if mask_file else f"example '{example}'"
        return load_label_map(path, max_pixels=self.pipe.cfg.sample.max_input_pixels), shown

    def preview(self, mask_file, example):
        """(coloured mask, status) for the mask the next generation will use."""
        import gradio as gr
        from face_mogle.labels import CLASSES, colorize
        from face_mogle.pipeline import one_line, user_errors

        try:
            labels, shown = self._labels(mask_file, example)
        except user_errors() as err:
            gr.Warning(one_line(err))
            return None, f"**Mask not usable:** {one_line(err)}"
        if labels is None:
            return None, "No mask: generation runs in **text-only** mode."
        import numpy as np

        present = [CLASSES[c] for c in np.unique(labels)]
        return colorize(labels), f"Mask {shown}: {labels.shape[1]}x{labels.shape[0]}, classes: {', '.join(present)}."

    def pick_example(self, example):
        """Choosing an example sets its prompt and clears any upload."""
        import gradio as gr

        if example not in self.examples:
            return None, None, "No mask: generation runs in **text-only** mode.", gr.update()
        image, status = self.preview(None, example)
        return None, image, status, self.examples[example][1]

    def upload(self, mask_file):
        """An upload replaces the example choice."""
        image, status = self.preview(mask_file, None)
        return TEXT_ONLY, image, status

    def has_identity(self) -> bool:
        """Does the loaded run take a reference face (trained with model.identity)?"""
        return self.pipe.cfg.model.identity.encoder is not None

    def identity_note(self) -> str:
        if self.has_identity():
            return ("**Identity (optional):** upload a reference face (one front-facing face); the face generated "
                    f"is that person, read by this run's {self.pipe.cfg.model.identity.encoder} identity encoder. "
                    "Clear it to generate anyone.")
        return ("**Identity:** this run was trained without identity (model.identity.encoder is null), so it takes "
                "no reference face; a run trained with an identity stage shows a reference-face upload here.")

    def identity_preview(self, identity_file):
        """(the reference face, status) for an uploaded reference: read and its face found now, so a
        picture without a face is reported on upload, not at Generate."""
        import gradio as gr
        from face_mogle.pipeline import one_line, user_errors

        path = upload_path(identity_file)
        if not path or not self.has_identity():
            return None, "No reference face: the face generated is anyone the prompt and mask allow."
        try:
            encoder = self.pipe.identity_encoder()
            image, _ = encoder.read(path)
            encoder.crops([path])  # finds the face (IdentityError naming the file: "no face found")
        except user_errors() as err:
            gr.Warning(one_line(err))
            return None, f"**Reference face not usable:** {one_line(err).replace(str(path), Path(path).name)}"
        return image, f"Reference face {Path(path).name}: {image.width}x{image.height}, a face found."

    def generate(self, mask_file, example, prompt, seed, steps, guidance, condition_scale, size, progress=None,
                 identity_file=None):
        """(face, expert map, status); errors become a status line and a warning, never a traceback.
        identity_file: a reference face (runs trained with identity), or None."""
        import gradio as gr
        from face_mogle.pipeline import one_line, user_errors

        reference = upload_path(identity_file) or None
        try:
            labels, shown = self._labels(mask_file, example)
            seed, steps, size = int(seed), int(steps), int(size)
            callback = None
            if progress is not None:
                callback = lambda done, total: progress(done / total, desc=f"step {done}/{total}")  # noqa: E731
            # the file itself, not its labels: `model.global_map: stored` renders it as stored
            out = self.pipe(prompt or "", self._mask_path(mask_file, example), seeds=[seed], steps=steps, guidance=float(guidance),
                            condition_scale=float(condition_scale), size=size, batch_size=1,
                            return_gates=True, on_step=callback,
                            identities=None if reference is None else [reference])
        except user_errors() as err:
            gr.Warning(one_line(err))
            message = one_line(err) if reference is None else one_line(err).replace(str(reference), Path(reference).name)
            return None, None, f"**Error:** {message}"
        except (TypeError, ValueError, OverflowError) as err:  # e.g. an empty number box
            gr.Warning(f"invalid setting: {one_line(err)}")
            return None, None, f"**Error:** invalid setting: {one_line(err)}"
        except Exception as err:  # a bug: the console gets the traceback, the page one line
            traceback.print_exc()
            return None, None, f"**Error:** internal error ({type(err).__name__}: {one_line(err)}); see the server log"
        s = out.settings
        gates = out.expert_maps[0] if out.expert_maps else None
        mode = s["modes"][0]  # mask+text, text-only, ... with "+identity" for a reference face
        what = f", mask {shown}" if shown else ""
        if reference is not None:
            what += f", reference face {Path(reference).name}"
        cfg = f"cfg scale {s['cfg_scale']}"
        if s["text_cfg_scale"] != s["cfg_scale"]:
            cfg += f" (prompt {s['text_cfg_scale']})"
        status = (f"Done: {mode}{what}, {size}x{size}, {steps} steps, guidance {s['guidance']}, "
                  f"condition scale {s['condition_scale']}, {cfg}, seed {seed}.")
        return out.images[0], gates, status + unread_note(self.pipe, prompt)


# ---------------------------------------------------------------------------------------------
# The Edit tab: a real face, its mask, and the mask painted (or the description rewritten).

EDIT_EXAMPLE_DIR = EXAMPLES_DIR / "edit"
EDITOR_SIZE = 512  # the painting canvas, px: masks are shown (and painted) at this size
PAINTED_ALPHA = 128  # a layer pixel at least this opaque is painted (anti-aliased stroke edges: half in)


def find_edit_example(folder: Path = EDIT_EXAMPLE_DIR) -> Optional[tuple[Path, Path, str]]:
    """(face, its mask, its caption) from face.png, mask.png and prompt.txt, or None."""
    face, mask, txt = folder / "face.png", folder / "mask.png", folder / "prompt.txt"
    if face.is_file() and mask.is_file() and txt.is_file():
        return face, mask, txt.read_text().strip()
    return None


def labels_from_painting(rgb) -> "np.ndarray":
    """A painted image [H, W, 3 or 4] (alpha ignored) → uint8 labels [H, W]: every pixel takes the
    class of the NEAREST palette colour, so slightly-off colours (lossy export, blending) still land on
    a class and exact palette colours map back exactly."""
    import numpy as np
    from face_mogle.labels import PALETTE

    rgb = np.asarray(rgb)
    if rgb.ndim != 3 or rgb.shape[2] not in (3, 4):
        raise ValueError(f"a painting must be an RGB(A) image [H, W, 3|4], got shape {list(rgb.shape)}")
    px = rgb[..., :3].reshape(-1, 1, 3).astype(np.int32)
    dist = ((px - PALETTE.astype(np.int32)[None]) ** 2).sum(-1)  # [H*W, 19]
    return dist.argmin(1).astype(np.uint8).reshape(rgb.shape[:2])


def resize_labels(labels, hw: tuple[int, int]):
    """Nearest-neighbour resize of a label map to (H, W): no new values appear."""
    import numpy as np
    from PIL import Image

    if labels.shape == tuple(hw):
        return labels
    return np.asarray(Image.fromarray(labels, "L").resize((hw[1], hw[0]), Image.NEAREST))


def editor_value(labels) -> dict:
    """The painting canvas for a source mask: its palette colours at EDITOR_SIZE, nothing painted yet."""
    import numpy as np
    from face_mogle.labels import colorize

    rgb = colorize(resize_labels(labels, (EDITOR_SIZE, EDITOR_SIZE)))
    empty = np.zeros((EDITOR_SIZE, EDITOR_SIZE, 4), np.uint8)  # the layer strokes go on (without one, none can)
    return {"background": rgb, "layers": [empty], "composite": rgb}


def painted_labels(painting, source):
    """The edited mask: `source` (uint8 [H, W]) with the painted pixels relabelled; (labels, pixels changed).

    The strokes are read from the editor's layers: a pixel is painted where a layer is at least half
    opaque, with the class nearest to the layer's own colour there (the brush colour, whatever the
    blend with the background) — so anti-aliased stroke edges cannot create a third class, as the
    composite could (half hair (0,0,204) over background (0,0,0) is (0,0,102), nearest to l_lip).
    Without layers (another client), the composite's changes against the background are used."""
    import numpy as np
    from PIL import Image

    out = source.copy()
    if not isinstance(painting, dict):  # None: no canvas (no source mask shown yet)
        return out, 0
    layers = [np.asarray(x) for x in (painting.get("layers") or []) if x is not None]
    layers = [x for x in layers if x.ndim == 3 and x.shape[2] == 4]
    background, composite = painting.get("background"), painting.get("composite")
    painted = None  # uint8 labels at the canvas size, 255 = untouched
    for layer in layers:
        if painted is None:
            hw = np.asarray(background).shape[:2] if background is not None else layer.shape[:2]
            painted = np.full(hw, 255, np.uint8)
        if layer.shape[:2] != painted.shape:
            layer = np.asarray(Image.fromarray(layer, "RGBA").resize(painted.shape[::-1], Image.NEAREST))
        on = layer[..., 3] >= PAINTED_ALPHA
        painted[on] = labels_from_painting(layer)[on]
    if painted is None and composite is not None:
        now = labels_from_painting(composite)
        before = (labels_from_painting(background) if background is not None
                  else resize_labels(source, now.shape))
        if before.shape != now.shape:
            before = resize_labels(before, now.shape)
        painted = np.where(now != before, now, 255).astype(np.uint8)
    if painted is None:
        return out, 0
    painted = resize_labels(painted, source.shape)
    out = np.where(painted != 255, painted, source).astype(np.uint8)
    return out, int((out != source).sum())


def legend_html() -> str:
    """The class ↔ brush colour legend (the brush's swatches carry no names), in palette order."""
    from face_mogle.labels import CLASSES, PALETTE

    items = "".join(
        f'<span style="display:inline-flex;align-items:center;margin:2px 10px 2px 0;white-space:nowrap">'
        f'<span style="display:inline-block;width:14px;height:14px;margin-right:4px;border:1px solid #888;'
        f'background:rgb({r},{g},{b})"></span>{i} {name}</span>'
        for i, (name, (r, g, b)) in enumerate(zip(CLASSES, PALETTE.tolist())))
    return f'<div style="font-size:0.85em;line-height:1.6">Brush colours, in order: {items}</div>'


def area_view(face, alpha):
    """The face greyed out where the edit could not reach: alpha [H, W] in [0, 1] is the share of the
    edited pixel in the result (the paste-back blend), 0 = the input kept."""
    import numpy as np
    from PIL import Image

    face = np.asarray(face, dtype=np.float32)
    grey = 0.35 * face + 0.65 * 160.0
    alpha = np.asarray(alpha, dtype=np.float32)[..., None]
    return Image.fromarray((alpha * face + (1 - alpha) * grey).round().clip(0, 255).astype(np.uint8), "RGB")


class EditDemo:
    """The Edit tab's handlers, separate from the page so they can be tested without a browser.

    The source mask lives in a per-session state, {"labels": uint8 [H, W], "name": where it came
    from}; the painting canvas shows it (at EDITOR_SIZE) and the strokes on it are the edit."""

    def __init__(self, pipe, example: Optional[tuple[Path, Path, str]] = None,
                 weights_dir: str | os.PathLike = DEFAULT_WEIGHTS_DIR):
        self.pipe = pipe
        self.example = example
        self.weights_dir = str(weights_dir)
        self.bound = pipe.cfg.sample.max_input_pixels  # on every uploaded image, checked before decoding

    def default_parser(self) -> str:
        """synthfaces for a run trained on SynthFaces (its data.parser); else segformer (real faces) when its
        weights are there, and synthfaces (no weights needed) when they are not."""
        from face_mogle.eval.weights import FACE_PARSER, default_path

        if self.pipe.cfg.data.parser == "synthfaces":
            return "synthfaces"
        return "segformer" if default_path(self.weights_dir, FACE_PARSER).is_dir() else "synthfaces"

    @staticmethod
    def _source_status(source) -> str:
        import numpy as np
        from face_mogle.labels import CLASSES

        labels = source["labels"]
        present = ", ".join(CLASSES[c] for c in np.unique(labels))
        return (f"Source mask ({source['name']}): {labels.shape[1]}x{labels.shape[0]}, classes: {present}. "
                "Paint on it with the class colours, or upload an edited mask, then press **Edit**.")

    def load_example(self):
        """(face file, face view, source-mask file, source state, painting, prompt, source prompt,
        edited-mask file, status)."""
        import gradio as gr
        from face_mogle.data.masks import load_label_map
        from face_mogle.editing import load_face
        from face_mogle.pipeline import one_line, user_errors

        if self.example is None:
            gr.Warning("no edit example shipped (assets/examples/edit/)")
            return (gr.update(),) * 8 + ("**Error:** no edit example shipped (assets/examples/edit/).",)
        face_path, mask_path, caption = self.example
        try:
            face = load_face(face_path, None, self.bound)
            source = {"labels": load_label_map(mask_path, max_pixels=self.bound), "name": "the example's mask"}
        except user_errors() as err:
            gr.Warning(one_line(err))
            return (gr.update(),) * 8 + (f"**Error:** {one_line(err)}",)
        return (str(face_path), face, None, source, editor_value(source["labels"]), caption, caption, None,
                f"Example loaded. {self._source_status(source)}")

    def new_face(self, face):
        """A new face (an uploaded file, read here: upright, bounded, 16-bit scaled; or an array) invalidates
        the source mask: (face view, source-mask file, state, painting, status)."""
        import gradio as gr
        import numpy as np
        from face_mogle.editing import read_face
        from face_mogle.pipeline import one_line, user_errors

        face = upload_path(face) if not hasattr(face, "shape") else face
        if face is None:
            return None, None, None, None, "No face: upload one, or load the example."
        try:
            image = read_face(face, self.bound)
        except user_errors() as err:  # the reason, where gradio's own decoding showed a bare "Error"
            gr.Warning(one_line(err))
            return None, None, None, None, f"**Face not usable:** {one_line(err)}"
        w, h = image.size
        note = "" if h == w else " **It is not square: the edit will refuse it** (crop it to a square first)."
        return (np.asarray(image), None, None, None, f"Face {w}x{h} loaded.{note} Now upload its mask, or press **Parse the face** "
                "(or just press **Edit**: the face is parsed then).")

    def load_source(self, mask_file):
        """An uploaded source mask: (state, painting, status)."""
        import gradio as gr
        from face_mogle.data.masks import load_label_map
        from face_mogle.pipeline import one_line, user_errors

        path = upload_path(mask_file)
        if path is None:
            return None, None, "No source mask: upload the face's mask, or parse the face."
        try:
            source = {"labels": load_label_map(path, max_pixels=self.bound), "name": Path(path).name}
        except user_errors() as err:
            gr.Warning(one_line(err))
            return None, None, f"**Mask not usable:** {one_line(err)}"
        return source, editor_value(source["labels"]), self._source_status(source)

    def _parse(self, face, parser):
        from face_mogle.editing import parse_face
        from face_mogle.pipeline import SamplingError

        face = upload_path(face) if not hasattr(face, "shape") else face
        if face is None:
            raise SamplingError("no face: upload a face image, or load the example")
        try:
            labels = parse_face(face, parser, self.weights_dir, device=str(self.pipe.device), max_pixels=self.bound)
        except SamplingError as err:  # the library's hint names the CLI's option
            text = str(err).replace("pass the face's own mask with --source_mask",
                                    "upload the face's own mask instead")
            raise SamplingError(text) from None
        return {"labels": labels, "name": f"parsed by {parser}"}

    def parse(self, face, parser):
        """Parse the face into its source mask: (state, painting, status)."""
        import gradio as gr
        from face_mogle.pipeline import one_line, user_errors

        try:
            source = self._parse(face, parser)
        except user_errors() as err:
            gr.Warning(one_line(err))
            return gr.update(), gr.update(), f"**Error:** {one_line(err)}"
        return source, editor_value(source["labels"]), self._source_status(source)

    def check_edited(self, mask_file):
        """An uploaded edited mask: status only (it replaces the painting at Edit time)."""
        import gradio as gr
        from face_mogle.data.masks import load_label_map
        from face_mogle.pipeline import one_line, user_errors

        path = upload_path(mask_file)
        if path is None:
            return "No edited mask file: **Edit** uses the painting."
        try:
            labels = load_label_map(path, max_pixels=self.bound)
        except user_errors() as err:
            gr.Warning(one_line(err))
            return f"**Mask not usable:** {one_line(err)}"
        return f"Edited mask {Path(path).name}: {labels.shape[1]}x{labels.shape[0]}; **Edit** uses it instead of the painting."

    def edit(self, face, source, parser, painting, edited_file, prompt, source_prompt, regions, strength,
             inversion, margin, seed, steps, size, guidance=None, condition_scale=None, paste_back=True,
             progress=None):
        """(original, result, edit area, status, source state, painting).

        The source mask is the state's, or the face parsed by `parser` (then the state and the
        painting are filled with it too); the edited mask is the uploaded file, or the painting,
        or (nothing painted) the source itself: a text edit, where `regions` say what may change."""
        import gradio as gr
        from PIL import Image
        from face_mogle.data.masks import load_label_map
        from face_mogle.editing import at_side, feather, load_face
        from face_mogle.pipeline import SamplingError, one_line, user_errors

        keep = gr.update()
        failed = lambda text: (None, None, None, text, keep, keep)  # noqa: E731
        face = upload_path(face) if not hasattr(face, "shape") else face
        try:
            if face is None:
                raise SamplingError("no face: upload a face image, or load the example")
            seed, steps, size, margin = int(seed), int(steps), int(size), int(margin)
            parsed = source is None
            if parsed:
                source = self._parse(face, parser)
            edited_path = upload_path(edited_file)
            if edited_path is not None:
                target, what = load_label_map(edited_path, max_pixels=self.bound), f"edited mask {Path(edited_path).name}"
            else:
                target, changed = painted_labels(painting, source["labels"])
                what = (f"painted mask ({changed} pixels relabelled)" if changed
                        else "mask unchanged (a text edit)")
            callback = None
            if progress is not None:
                callback = lambda done, total: progress(done / total, desc=f"step {done}/{total}")  # noqa: E731
            out = self.pipe.edit(
                face, target, prompt or "", source["labels"],
                source_prompts=source_prompt if (source_prompt or "").strip() else None,
                seeds=seed, regions=list(regions or []), strength=float(strength), inversion=inversion,
                margin=margin, paste_back=bool(paste_back), steps=steps,
                guidance=None if guidance is None else float(guidance),
                condition_scale=None if condition_scale is None else float(condition_scale),
                size=size, batch_size=1, on_step=callback)
            original = load_face(face, None, self.bound)  # the result has the input's own size
        except user_errors() as err:
            gr.Warning(one_line(err))
            return failed(f"**Error:** {one_line(err)}")
        except (TypeError, ValueError, OverflowError) as err:  # e.g. an empty number box
            gr.Warning(f"invalid setting: {one_line(err)}")
            return failed(f"**Error:** invalid setting: {one_line(err)}")
        except Exception as err:  # a bug: the console gets the traceback, the page one line
            traceback.print_exc()
            return failed(f"**Error:** internal error ({type(err).__name__}: {one_line(err)}); see the server log")
        s = out.settings
        reach = feather(*at_side(out.areas[0], s["margin"], original.shape[0]))  # what paste-back takes from the edit
        named = s["regions"][0] if s["regions"] and isinstance(s["regions"][0], list) else s["regions"]  # per image
        regions_note = f", regions {', '.join(named)}" if named else ""
        side = original.shape[0]
        shape = f"{side}x{side}" + (f" (generated at {size})" if side != size else "")
        status = (f"Done: edit, {s['edited_fraction'][0]:.0%} of the image editable, {shape}, "
                  f"{s['denoised_steps']} of {s['steps']} steps, strength {s['strength']}, inversion {s['inversion']}, "
                  f"seed {seed}{regions_note}; source mask: {source['name']}; {what}.")
        status += unread_note(self.pipe, prompt)
        new_state, new_painting = (source, editor_value(source["labels"])) if parsed else (keep, keep)
        return Image.fromarray(original, "RGB"), out.images[0], area_view(original, reach), status, new_state, new_painting


def build_demo(pipe, examples=None, title: str = "Face-MoGLE", edit_example="default",
               weights_dir: str | os.PathLike = DEFAULT_WEIGHTS_DIR):
    import gradio as gr

    examples = find_examples() if examples is None else examples
    edit_example = find_edit_example() if edit_example == "default" else edit_example
    demo_state = Demo(pipe, examples)
    cfg = pipe.cfg.sample
    first = next(iter(examples), None)
    with gr.Blocks(title=title, delete_cache=KEEP_FILES) as demo:
        gr.Markdown(f"# {title}")
        with gr.Tabs():
            with gr.Tab("Generate", elem_id="tab_generate"):
                gr.Markdown(
                    "Upload a face mask (label PNG, values 0..18, or coloured with the CelebAMask-HQ "
                    "palette) or pick an example, write a prompt, and generate. An empty prompt is mask-only "
                    "mode; no mask is text-only mode. The expert map shows, per image token, the expert the "
                    "MoGLE gate weighted most (light grey: global expert; colours: the local expert of that class)."
                )
                with gr.Row():
                    with gr.Column():
                        mask_file = gr.File(label="Mask (PNG)", file_types=["image"], type="filepath", elem_id="mask_upload")
                        example = gr.Dropdown(choices=[TEXT_ONLY, *examples], value=first or TEXT_ONLY,
                                              label="…or an example mask", elem_id="example")
                        mask_view = gr.Image(label="Mask (palette colours)", type="numpy", interactive=False,
                                             format="png", elem_id="mask_view")
                        prompt = gr.Textbox(label="Prompt", value=examples[first][1] if first else "", lines=3, elem_id="prompt")
                        # a file read by our own reader (size-bounded, named in errors), as the Edit tab's face;
                        # hidden for a run without identity, whose note says why
                        with_identity = demo_state.has_identity()
                        gr.Markdown(demo_state.identity_note(), elem_id="identity_note")
                        identity_file = gr.File(label="Identity: a reference face (optional)", file_types=["image"],
                                                type="filepath", visible=with_identity, elem_id="identity_upload")
                        identity_view = gr.Image(label="Reference face", type="pil", format="png", interactive=False,
                                                 visible=with_identity, height=160, elem_id="identity_view")
                        with gr.Row():
                            seed = gr.Number(label="Seed", value=42, precision=0, elem_id="seed")
                            size = gr.Number(label=f"Size (multiple of {pipe.token_pixels})", value=cfg.size,
                                             precision=0, elem_id="size")
                        steps = gr.Slider(1, 100, value=cfg.steps, step=1, label="Steps", elem_id="steps")
                        guidance = gr.Slider(0.0, 10.0, value=cfg.guidance, step=0.1, label="Guidance", elem_id="guidance")
                        cond_scale = gr.Slider(0.1, 4.0, value=cfg.condition_scale, step=0.05, label="Condition scale (mask strength)",
                                               elem_id="condition_scale")
                        run = gr.Button("Generate", variant="primary", elem_id="generate")
                    with gr.Column():
                        result = gr.Image(label="Result", type="pil", format="png", interactive=False, elem_id="result")
                        gates = gr.Image(label="Expert map", type="pil", format="png", interactive=False, elem_id="gates")
                        status = gr.Markdown("", elem_id="status")
            with gr.Tab("Edit", elem_id="tab_edit"):
                edit_tab(pipe, edit_example, weights_dir)

        def on_generate(mask_file, example, prompt, seed, steps, guidance, cond_scale, size, identity_file,
                        progress=gr.Progress()):
            return demo_state.generate(mask_file, example, prompt, seed, steps, guidance, cond_scale, size, progress,
                                       identity_file)

        example.input(demo_state.pick_example, [example], [mask_file, mask_view, status, prompt])
        mask_file.upload(demo_state.upload, [mask_file], [example, mask_view, status])
        mask_file.clear(demo_state.preview, [mask_file, example], [mask_view, status])
        identity_file.upload(demo_state.identity_preview, [identity_file], [identity_view, status])
        identity_file.clear(demo_state.identity_preview, [identity_file], [identity_view, status])
        run.click(on_generate, [mask_file, example, prompt, seed, steps, guidance, cond_scale, size, identity_file],
                  [result, gates, status])
        demo.load(demo_state.preview, [mask_file, example], [mask_view, status])
    demo.queue(default_concurrency_limit=1, max_size=QUEUE_SIZE)  # one worker; a full queue says so
    return demo


def edit_tab(pipe, example, weights_dir):
    """The Edit tab's components and events (inside a gr.Tab)."""
    import gradio as gr
    from face_mogle.editing import DEFAULT_INVERSION, DEFAULT_MARGIN, DEFAULT_PASTE_BACK, DEFAULT_STRENGTH, INVERSIONS
    from face_mogle.eval.miou import PARSERS
    from face_mogle.labels import CLASSES, PALETTE

    handlers = EditDemo(pipe, example, weights_dir)
    cfg = pipe.cfg.sample
    colours = ["#%02x%02x%02x" % tuple(c) for c in PALETTE.tolist()]
    gr.Markdown(
        "Edit a real face by editing its **mask** or its **description**. Upload a square face and its "
        "mask (or parse the face, or load the example), then paint on the mask with the class colours "
        "(or upload an edited mask) and/or rewrite the description, and press **Edit**. Only the "
        "relabelled pixels (plus the classes named in *Regions*, plus *Margin* pixels) are regenerated; "
        "with nothing relabelled and no region named there is nothing to edit (name every class to redraw the "
        "whole face). The result has the face's own size: only the edit area is upsampled."
    )
    source = gr.State(None)
    with gr.Row():
        with gr.Column():
            # a file, read by our own reader (upright, size-bounded, 16-bit scaled): gradio's image input
            # would decode it first, and show a bare "Error" for a bad one
            face = gr.File(label="Face (square image)", file_types=["image"], type="filepath", elem_id="edit_face")
            face_view = gr.Image(label="Face", type="numpy", format="png", interactive=False, elem_id="edit_face_view")
            load_example = gr.Button("Load the example", visible=example is not None, elem_id="edit_example")
            source_file = gr.File(label="Its mask (label PNG, or palette-coloured)", file_types=["image"],
                                  type="filepath", elem_id="edit_source_upload")
            with gr.Row():
                parser = gr.Dropdown(choices=list(PARSERS), value=handlers.default_parser(), label="…or parse the face with",
                                     elem_id="edit_parser", scale=2)
                parse = gr.Button("Parse the face", elem_id="edit_parse", scale=1)
        with gr.Column():
            painting = gr.ImageEditor(
                label="Edited mask: paint on the source mask with the class colours", type="numpy",
                image_mode="RGBA", format="png", sources=(), transforms=(), layers=False,
                canvas_size=(EDITOR_SIZE, EDITOR_SIZE),
                brush=gr.Brush(colors=colours, default_color=colours[CLASSES.index("hair")], color_mode="fixed",
                               default_size=8),
                elem_id="edit_painting")
            gr.HTML(legend_html(), elem_id="edit_legend")
            edited_file = gr.File(label="…or upload the edited mask (replaces the painting)", file_types=["image"],
                                  type="filepath", elem_id="edit_mask_upload")
    with gr.Row():
        with gr.Column():
            caption = example[2] if example else ""
            prompt = gr.Textbox(label="Description (edit it for a text edit)", value=caption, lines=3, elem_id="edit_prompt")
            source_prompt = gr.Textbox(label="The face's own description (source prompt, read by the ode inversion only; empty = the description above)",
                                       value=caption, lines=2, elem_id="edit_source_prompt")
            regions = gr.Dropdown(choices=list(CLASSES), value=[], multiselect=True,
                                  label="Regions the text edit may change (besides relabelled pixels)",
                                  elem_id="edit_regions")
            with gr.Row():
                strength = gr.Slider(0.05, 1.0, value=DEFAULT_STRENGTH, step=0.05, label="Strength (share of the schedule re-run)",
                                     elem_id="edit_strength")
                inversion = gr.Radio(list(INVERSIONS), value=DEFAULT_INVERSION, label="Inversion", elem_id="edit_inversion")
            with gr.Row():
                margin = gr.Slider(0, 32, value=DEFAULT_MARGIN, step=1, label="Margin (px)", elem_id="edit_margin")
                seed = gr.Number(label="Seed", value=42, precision=0, elem_id="edit_seed")
                size = gr.Number(label=f"Size (multiple of {pipe.token_pixels})", value=cfg.size, precision=0,
                                 elem_id="edit_size")
            steps = gr.Slider(1, 100, value=cfg.steps, step=1, label="Steps", elem_id="edit_steps")
            with gr.Accordion("More settings", open=False):
                guidance = gr.Slider(0.0, 10.0, value=cfg.guidance, step=0.1, label="Guidance", elem_id="edit_guidance")
                cond_scale = gr.Slider(0.1, 4.0, value=cfg.condition_scale, step=0.05,
                                       label="Condition scale (mask strength)", elem_id="edit_condition_scale")
                paste_back = gr.Checkbox(value=DEFAULT_PASTE_BACK, label="Paste the input back outside the edit area",
                                         elem_id="edit_paste_back")
            run = gr.Button("Edit", variant="primary", elem_id="edit_run")
        with gr.Column():
            with gr.Row():
                original = gr.Image(label="Original (at the edit size)", type="pil", format="png", interactive=False,
                                    height=320, elem_id="edit_original")
                result = gr.Image(label="Edited", type="pil", format="png", interactive=False, height=320,
                                  elem_id="edit_result")
            area = gr.Image(label="Edit area (greyed: kept)", type="pil", format="png", interactive=False, height=320,
                            elem_id="edit_area")
            status = gr.Markdown("Upload a face and its mask, or load the example.", elem_id="edit_status")

    def on_edit(face, source, parser, painting, edited_file, prompt, source_prompt, regions, strength, inversion,
                margin, seed, steps, size, guidance, cond_scale, paste_back, progress=gr.Progress()):
        return handlers.edit(face, source, parser, painting, edited_file, prompt, source_prompt, regions, strength,
                             inversion, margin, seed, steps, size, guidance, cond_scale, paste_back, progress)

    load_example.click(handlers.load_example, [],
                       [face, face_view, source_file, source, painting, prompt, source_prompt, edited_file, status])
    face.upload(handlers.new_face, [face], [face_view, source_file, source, painting, status])
    face.clear(handlers.new_face, [face], [face_view, source_file, source, painting, status])
    source_file.upload(handlers.load_source, [source_file], [source, painting, status])
    source_file.clear(handlers.load_source, [source_file], [source, painting, status])
    parse.click(handlers.parse, [face, parser], [source, painting, status])
    edited_file.upload(handlers.check_edited, [edited_file], [status])
    edited_file.clear(handlers.check_edited, [edited_file], [status])
    run.click(on_edit, [face, source, parser, painting, edited_file, prompt, source_prompt, regions, strength,
                        inversion, margin, seed, steps, size, guidance, cond_scale, paste_back],
              [original, result, area, status, source, painting])


def parse_args(argv=None):
    p = OneLineParser(description="Face-MoGLE web demo (gradio).")
    p.add_argument("--run", default=str(DEFAULT_RUN), help="run folder (config.yaml + weights); default: the shipped tiny model")
    p.add_argument("--pretrained", default=None, help="FLUX backbone folder or 'tiny', instead of the run config's 'pretrained'")
    p.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")
    p.add_argument("--dtype", default=None, choices=["float32", "bfloat16", "float16"], help="weights dtype (default: the run config's)")
    add_memory_arguments(p)
    p.add_argument("--preset", default=None, metavar="FILE", help="a YAML of config keys applied over the run's config (before --set): configs/official-sampler.yaml samples exactly as the official code does")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE", help="run config override (repeatable)")
    p.add_argument("--weights_dir", default=str(DEFAULT_WEIGHTS_DIR), metavar="DIR", help="the eval suite's models, for the Edit tab's segformer face parser (face-parsing/ under DIR; default: checkpoints/eval)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1, this machine only); 0.0.0.0 serves your network")
    p.add_argument("--port", type=int, default=7860, help="port to listen on (default: 7860)")
    p.add_argument("--share", action="store_true", help="also open a public gradio.live link (needs internet)")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    run = Path(args.run)
    if not (run / "config.yaml").is_file():
        hint = " (the tiny demo model is missing: `git checkout checkpoints/face-mogle-tiny` restores it, `bash script/train_tiny.sh` remakes it)" if run.resolve() == DEFAULT_RUN else ""
        print(f"app.py: error: run folder {run} not found or has no config.yaml{hint}; pass --run RUN", file=sys.stderr)
        return 2
    from face_mogle.pipeline import FaceMoGLEPipeline, one_line, preset_overrides, user_errors

    try:
        pipe = FaceMoGLEPipeline.from_run(run, pretrained=args.pretrained, device=args.device, dtype=args.dtype,
                                          overrides=preset_overrides(args.preset) + args.overrides
                                          + memory_overrides(args))
    except user_errors() as err:
        print(f"app.py: error: {one_line(err)}", file=sys.stderr)
        return 2
    import tempfile

    # uploads and outputs in a folder of this demo's own (not the shared /tmp/gradio), removed at exit
    own_temp = None if os.environ.get("GRADIO_TEMP_DIR") else tempfile.TemporaryDirectory(prefix="face-mogle-app-")
    if own_temp is not None:
        os.environ["GRADIO_TEMP_DIR"] = own_temp.name  # read when gradio is imported, just below
    import gradio as gr

    demo = build_demo(pipe, weights_dir=args.weights_dir)
    kwargs = dict(server_name=args.host, server_port=args.port, share=args.share, show_error=False,
                  max_file_size=MAX_UPLOAD)
    system_fonts = dict(font=["ui-sans-serif", "system-ui", "sans-serif"], font_mono=["ui-monospace", "monospace"])
    if "theme" in inspect.signature(demo.launch).parameters:  # gradio 6: theme goes to launch()
        kwargs["theme"] = gr.themes.Default(**system_fonts)  # no web fonts: the page works offline
    print(f"Face-MoGLE demo: run {run}, backbone {pipe.backbone.source}, device {pipe.device}; files in "
          f"{os.environ['GRADIO_TEMP_DIR']}", flush=True)
    try:
        demo.launch(**kwargs)
    finally:
        if own_temp is not None:
            own_temp.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
