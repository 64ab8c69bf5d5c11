"""SynthFaces throughput on one CPU core: render only, render + write (JPEG, PNG, captions), and
parse (for reference). Median of --repeats runs; target: render >= 200 images/s at 256².

    python bench/synthfaces.py [--size 256] [--num 200] [--repeats 5] [--out bench.json]
"""

from __future__ import annotations

import os

# One core: keep numpy's BLAS from spreading over the machine (set before numpy loads).
for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(var, "1")

import argparse
import json
import statistics
import sys
import tempfile
import time

from face_mogle.data.synthfaces import parse, render, write_dataset


def rate(fn, num: int, repeats: int) -> float:
    """Median images/s of fn(offset) over `repeats` runs of `num` images each."""
    rates = []
    for r in range(repeats):
        start = time.perf_counter()
        fn(r * num)
        rates.append(num / (time.perf_counter() - start))
    return statistics.median(rates)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--num", type=int, default=200, help="images per run")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", help="also write the figures as JSON here")
    args = parser.parse_args(argv)
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})  # pin to one core

    n, s = args.num, args.size
    results = {"size": s, "images_per_run": n, "repeats": args.repeats}
    results["render"] = rate(lambda off: [render((0, off + i), s) for i in range(n)], n, args.repeats)
    with tempfile.TemporaryDirectory() as tmp:
        results["render_write"] = rate(
            lambda off: write_dataset(f"{tmp}/run{off}", n, s, seed=off, progress=False), n, args.repeats
        )
    images = [render((1, i), s).image for i in range(min(n, 50))]
    results["parse"] = rate(lambda off: [parse(im) for im in images], len(images), args.repeats)

    print(f"SynthFaces at {s}x{s}, one CPU core, median of {args.repeats} runs")
    print(f"{'stage':<16}{'images/s':>10}{'ms/image':>10}")
    for key, label in (("render", "render"), ("render_write", "render + write"), ("parse", "parse")):
        print(f"{label:<16}{results[key]:>10.1f}{1000 / results[key]:>10.2f}")
    if args.out:
        with open(args.out, "w") as f:
            json.dump(results, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
