"""`python -m face_mogle.memory`: print the memory plan of a config (see face_mogle.memory.plan)."""

from __future__ import annotations

import argparse
import sys

from .plan import GIB, Plan


def _gib(n: int) -> str:
    return f"{n / GIB:.2f}"


def report(p: Plan) -> str:
    lines = [f"Memory plan: {p.mode}, {p.size}² (text {p.streams.text} + image {p.streams.image} + condition "
             f"{p.streams.cond} tokens), batch {p.batch}. GiB = 2³⁰ bytes.", "",
             "| component | parameters | none | int8 | fp8 | nf4 | stays unquantized |", "|---|---|---|---|---|---|---|"]
    for c in p.components.values():
        lines.append(f"| {c.name} | {c.params / 1e9:.3f} B | " + " | ".join(_gib(c.bytes[s]) for s in ("none", "int8", "fp8", "nf4"))
                     + f" | {c.kept} |")
    a = p.adapters
    lines += ["", f"LoRA {a.lora_params:,} parameters ({_gib(a.weight_bytes(p.mode == 'train') - a.mogle_params * 4)} GiB), "
              f"MoGLE {a.mogle_params:,} (float32); trained: {a.trainable_params:,}"]
    if p.mode == "train":
        lines.append(f"gradients {_gib(a.grad_bytes())} GiB; optimizer state: adamw {_gib(a.optimizer_bytes('adamw'))}, "
                     f"adamw8bit {_gib(a.optimizer_bytes('adamw8bit'))}, prodigy {_gib(a.optimizer_bytes('prodigy'))} GiB")
    lines += ["", "Activations (GiB): " + ", ".join(f"{k} {_gib(v)}" for k, v in p.activations.items()), ""]
    keys = list(p.settings[0].knobs)
    lines += ["| " + " | ".join(keys) + " | predicted peak (GiB) | peak phase | expected time × |" + (" fits |" if p.budget else ""),
              "|" + "---|" * (len(keys) + 3 + bool(p.budget))]
    for s in p.settings:
        mark = " ← config" if s.knobs == p.current_knobs else ""
        lines.append("| " + " | ".join(str(v) for v in s.knobs.values()) + f" | {_gib(s.peak)}{mark} | {s.parts['phase']} | "
                     f"{s.time:.2f} |" + ((" yes |" if s.fits else " no |") if p.budget else ""))
    if p.budget:
        gpu = (p.budget + 2**30) / GIB
        best = p.best
        lines += ["", f"On a {gpu:g} GiB GPU ({_gib(p.budget)} GiB usable): "
                  + (f"the fastest setting that fits is {best.label()} ({_gib(best.peak)} GiB)." if best
                     else "no setting fits; lower --batch_size or --size.")]
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m face_mogle.memory",
        description="Predict the GPU memory of sampling or training a config, before anything loads: every "
        "component is built on the meta device from the backbone's config.json files (nothing is read but "
        "configs, nothing downloaded). Prints each component's size under every quantization, the adapters, "
        "gradients and optimizer state, the activations, and the predicted peak of each setting.")
    parser.add_argument("--config", required=True, help="YAML config, e.g. configs/face-mogle.yaml")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config key, e.g. --set pretrained=checkpoints/FLUX.1-dev (repeatable)")
    parser.add_argument("--mode", choices=["sample", "train"], default="sample", help="what to plan (default: sample)")
    parser.add_argument("--gpu_gb", type=float, default=24.0,
                        help="the GPU's memory in GiB, e.g. 24 for an RTX 4090, 16 for an RTX 4080 (default: 24)")
    parser.add_argument("--size", type=int, default=None,
                        help="image size in pixels, a multiple of the token size (default: sample.size or data.size)")
    parser.add_argument("--batch_size", type=int, default=None,
                        help="images per pass (default: 1 for sampling, train.batch_size for training)")
    args = parser.parse_args(argv)

    from ..config import ConfigError, load_config
    from .components import PlannerError
    from .plan import plan

    try:
        cfg = load_config(args.config, args.overrides)
        result = plan(cfg, args.mode, size=args.size, batch_size=args.batch_size, gpu_gb=args.gpu_gb)
    except (ConfigError, PlannerError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(report(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
