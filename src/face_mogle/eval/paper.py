"""The paper's results table from an evaluation JSON (what `script/eval_paper.sh` ends with).

    python -m face_mogle.eval.paper results.json --name face-mogle --md table.md --json table.json

Columns in the order of the official evaluation (FID, KID, text consistency, CMMD, mask
consistency, ImageReward), each as the official scripts print it: KID ×1000, CLIP score ×100,
CMMD ×1000, and the DINO structure distance on the scale the official `eval_mask.py` prints.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from face_mogle.eval.report import write_atomic

# (column, metric key, field of the metric's result, which way is better)
COLUMNS = (
    ("FID", "fid", "value", "↓"),
    ("KID×1000", "kid", "value", "↓"),
    ("CLIP score", "clip", "value", "↑"),
    ("CMMD", "cmmd", "value", "↓"),
    ("DINO structure", "dino", "paper_scale", "↓"),
    ("ImageReward", "ir", "value", "↑"),
)


def paper_row(results: dict) -> dict:
    """{column: value or None (not computed / skipped)} from an eval JSON."""
    metrics = results.get("metrics", {})
    row = {}
    for column, key, field, _ in COLUMNS:
        res = metrics.get(key) or {}
        row[column] = None if "skipped" in res else res.get(field)
    return row


def markdown(name: str, row: dict, images: int | None) -> str:
    head = "| run | images | " + " | ".join(f"{c} {b}" for c, _, _, b in COLUMNS) + " |"
    rule = "|---|---:|" + "---:|" * len(COLUMNS)
    cells = " | ".join("–" if row[c] is None else f"{row[c]:.4f}" for c, *_ in COLUMNS)
    return f"{head}\n{rule}\n| {name} | {images if images is not None else '–'} | {cells} |\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("results", help="the JSON written by `python -m face_mogle.eval --out`")
    p.add_argument("--name", default=None, help="row label (default: the results file's folder name)")
    p.add_argument("--md", required=True, help="Markdown table to write")
    p.add_argument("--json", required=True, help="JSON of the table to write")
    args = p.parse_args(argv)
    path = Path(args.results)
    try:
        results = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        print(f"error: cannot read {path}: {err}", file=sys.stderr)
        return 2
    if results.get("status") != "complete":
        print(f"error: {path} is not a complete evaluation (rerun the evaluation)", file=sys.stderr)
        return 2
    row = paper_row(results)
    counts = [m.get("count") for m in results.get("metrics", {}).values() if isinstance(m, dict) and m.get("count")]
    name = args.name or path.parent.name
    table = markdown(name, row, max(counts) if counts else None)
    write_atomic(args.md, table)
    write_atomic(args.json, json.dumps({"run": name, "columns": [c for c, *_ in COLUMNS], "row": row,
                                        "source": str(path)}, indent=1) + "\n")
    print(table, end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
