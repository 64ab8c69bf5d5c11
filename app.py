"""Face-MoGLE web demo (gradio): a face mask + a prompt → a face, and the MoGLE expert map.

    python app.py                                  # the shipped tiny model, http://127.0.0.1:7860
    python app.py --run runs/face-mogle --port 7861
    python app.py --host 0.0.0.0                   # listen on every interface (your network)
    python app.py --share                          # a public gradio.live link (needs internet)

Masks are label PNGs (values 0..18) or images painted in the CelebAMask-HQ palette; they are
uploaded as files, so no lossy re-encoding touches the labels.
"""

from __future__ import annotations

import argparse
import inspect
import os
import sys
import traceback
from pathlib import Path

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


def find_examples(folder: Path = EXAMPLES_DIR) -> dict[str, tuple[Path, str]]:
    """name → (mask PNG, prompt): mask.png with prompt.txt, and any NAME.png with NAME.txt."""
    examples = {}
    for png in sorted(folder.glob("*.png")):
        txt = folder / ("prompt.txt" if png.stem == "mask" else png.stem + ".txt")
        if txt.is_file():
            examples[png.stem] = (png, txt.read_text().strip())
    return examples


class Demo:
    """The handlers, separate from the page so they can be tested without a browser."""

    def __init__(self, pipe, examples: dict[str, tuple[Path, str]]):
        self.pipe = pipe
        self.examples = examples

    def _labels(self, mask_file, example):
        """The chosen mask as labels (upload first, then the picked example), or None."""
        from face_mogle.data.masks import load_label_map

        path = mask_file if mask_file else (self.examples[example][0] if example in self.examples else None)
        if isinstance(path, dict):  # some gradio versions hand over {"path": ...}
            path = path.get("path") or path.get("name")
        if path is not None and not isinstance(path, (str, os.PathLike)):
            path = getattr(path, "name", path)  # a tempfile-like wrapper (older gradio)
        if path is None:
            return None, None
        shown = Path(path).name if mask_file else f"example '{example}'"
        return load_label_map(path), shown

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

    def generate(self, mask_file, example, prompt, seed, steps, guidance, condition_scale, size, progress=None):
        """(face, expert map, status); errors become a status line and a warning, never a traceback."""
        import gradio as gr
        from face_mogle.pipeline import mode_name, one_line, user_errors

        try:
            labels, shown = self._labels(mask_file, example)
            seed, steps, size = int(seed), int(steps), int(size)
            callback = None
            if progress is not None:
                callback = lambda done, total: progress(done / total, desc=f"step {done}/{total}")  # noqa: E731
            out = self.pipe(prompt or "", labels, seeds=[seed], steps=steps, guidance=float(guidance),
                            condition_scale=float(condition_scale), size=size, batch_size=1,
                            return_gates=True, on_step=callback)
        except user_errors() as err:
            gr.Warning(one_line(err))
            return None, None, f"**Error:** {one_line(err)}"
        except (TypeError, ValueError, OverflowError) as err:  # e.g. an empty number box
            gr.Warning(f"invalid setting: {one_line(err)}")
            return None, None, f"**Error:** invalid setting: {one_line(err)}"
        except Exception as err:  # a bug: the console gets the traceback, the page one line
            traceback.print_exc()
            return None, None, f"**Error:** internal error ({type(err).__name__}: {one_line(err)}); see the server log"
        s = out.settings
        gates = out.expert_maps[0] if out.expert_maps else None
        mode = mode_name(prompt or "", labels is not None)
        what = f", mask {shown}" if shown else ""
        return out.images[0], gates, (f"Done: {mode}{what}, {size}x{size}, {steps} steps, guidance {s['guidance']}, "
                                      f"condition scale {s['condition_scale']}, seed {seed}.")


def build_demo(pipe, examples=None, title: str = "Face-MoGLE"):
    import gradio as gr

    examples = find_examples() if examples is None else examples
    demo_state = Demo(pipe, examples)
    cfg = pipe.cfg.sample
    first = next(iter(examples), None)
    with gr.Blocks(title=title) as demo:
        gr.Markdown(
            f"# {title}\nUpload a face mask (label PNG, values 0..18, or coloured with the CelebAMask-HQ "
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

        def on_generate(mask_file, example, prompt, seed, steps, guidance, cond_scale, size, progress=gr.Progress()):
            return demo_state.generate(mask_file, example, prompt, seed, steps, guidance, cond_scale, size, progress)

        example.input(demo_state.pick_example, [example], [mask_file, mask_view, status, prompt])
        mask_file.upload(demo_state.upload, [mask_file], [example, mask_view, status])
        mask_file.clear(demo_state.preview, [mask_file, example], [mask_view, status])
        run.click(on_generate, [mask_file, example, prompt, seed, steps, guidance, cond_scale, size],
                  [result, gates, status])
        demo.load(demo_state.preview, [mask_file, example], [mask_view, status])
    demo.queue(default_concurrency_limit=1)
    return demo


def parse_args(argv=None):
    p = OneLineParser(description="Face-MoGLE web demo (gradio).")
    p.add_argument("--run", default=str(DEFAULT_RUN), help="run folder (config.yaml + weights); default: the shipped tiny model")
    p.add_argument("--pretrained", default=None, help="FLUX backbone folder or 'tiny', instead of the run config's 'pretrained'")
    p.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")
    p.add_argument("--dtype", default=None, choices=["float32", "bfloat16", "float16"], help="weights dtype (default: the run config's)")
    p.add_argument("--preset", default=None, metavar="FILE", help="a YAML of config keys applied over the run's config (before --set): configs/official-sampler.yaml samples exactly as the official code does")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE", help="run config override (repeatable)")
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
                                          overrides=preset_overrides(args.preset) + args.overrides)
    except user_errors() as err:
        print(f"app.py: error: {one_line(err)}", file=sys.stderr)
        return 2
    import gradio as gr

    demo = build_demo(pipe)
    kwargs = dict(server_name=args.host, server_port=args.port, share=args.share, show_error=False)
    system_fonts = dict(font=["ui-sans-serif", "system-ui", "sans-serif"], font_mono=["ui-monospace", "monospace"])
    if "theme" in inspect.signature(demo.launch).parameters:  # gradio 6: theme goes to launch()
        kwargs["theme"] = gr.themes.Default(**system_fonts)  # no web fonts: the page works offline
    print(f"Face-MoGLE demo: run {run}, backbone {pipe.backbone.source}, device {pipe.device}", flush=True)
    demo.launch(**kwargs)
    return 0


if __name__ == "__main__":
    sys.exit(main())
