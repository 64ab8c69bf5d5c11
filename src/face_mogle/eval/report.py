"""Presenting results: the console table, the JSON file (written atomically) and the HTML report."""

from __future__ import annotations

import base64
import html
import io
import json
import math
import os
import tempfile
from pathlib import Path

import numpy as np

from face_mogle.eval.images import load_rgb

# metric key -> (name shown, which direction is better)
DISPLAY = {
    "fid": ("FID", "lower"),
    "kid": ("KID x1000", "lower"),
    "clip": ("CLIP score", "higher"),
    "cmmd": ("CMMD", "lower"),
    "dino": ("DINO structure dist.", "lower"),
    "ir": ("ImageReward", "higher"),
    "miou": ("mIoU %", "higher"),
}
THUMB = 160  # report thumbnail side, pixels


def table_rows(metrics: dict) -> list[tuple[str, str, str, str]]:
    """(name, value, count, better) per metric, with mIoU's pixel accuracy as an extra row."""
    rows = []
    for key, res in metrics.items():
        name, better = DISPLAY.get(key, (key, ""))
        if "skipped" in res:
            rows.append((name, "skipped", "-", better))
            continue
        rows.append((name, f"{res['value']:.4f}", str(res.get("count", "")), better))
        if key == "miou":
            rows.append(("pixel accuracy %", f"{res['pixel_accuracy']:.4f}", str(res.get("count", "")), "higher"))
        if key == "dino":
            rows.append(("DINO (paper scale)", f"{res['paper_scale']:.4f}", str(res.get("count", "")), "lower"))
    return rows


def format_table(metrics: dict) -> str:
    rows = [("metric", "value", "images", "better")] + table_rows(metrics)
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    lines = []
    for j, r in enumerate(rows):
        lines.append(f"{r[0]:<{widths[0]}}  {r[1]:>{widths[1]}}  {r[2]:>{widths[2]}}  {r[3]:<{widths[3]}}".rstrip())
        if j == 0:
            lines.append("-" * len(lines[0]))
    skipped = [res["skipped"] for res in metrics.values() if "skipped" in res]
    return "\n".join(lines + skipped)


def _finite(obj):
    """JSON has no NaN/inf: write them as null."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    return obj


def write_atomic(path: str | Path, text: str) -> None:
    """Write to a temporary file beside `path`, then rename over it: readers never see half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; give the file the usual permissions
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def write_json(path: str | Path, data: dict) -> None:
    write_atomic(path, json.dumps(_finite(data), indent=2, allow_nan=False) + "\n")


def _data_uri(img) -> str:
    buf = io.BytesIO()
    img.convert("RGB").save(buf, format="JPEG", quality=85)
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _thumb(path: Path) -> str:
    img = load_rgb(path)
    img.thumbnail((THUMB, THUMB))
    return f'<img src="{_data_uri(img)}" alt="{html.escape(path.name)}">'


def _mask_thumb(path: Path) -> str:
    from PIL import Image

    from face_mogle.data.masks import load_label_map
    from face_mogle.labels import colorize

    img = Image.fromarray(colorize(load_label_map(path)))
    img.thumbnail((THUMB, THUMB), Image.NEAREST)
    return f'<img src="{_data_uri(img)}" alt="{html.escape(path.name)}">'


def sample_ids(ids: list[str], count: int) -> list[str]:
    """`count` ids spread evenly over the sorted list (first and last included)."""
    if count <= 0 or not ids:
        return []
    if count >= len(ids):
        return list(ids)
    picks = np.linspace(0, len(ids) - 1, count).round().astype(int)
    return [ids[i] for i in dict.fromkeys(picks.tolist())]


def write_html(path: str | Path, results: dict, sources: dict[str, dict[str, Path]], ids: list[str],
               captions: dict[str, str]) -> None:
    """A self-contained page: the metric table, settings, and a grid mask | real | generated."""
    e = html.escape
    rows = "".join(f"<tr><td>{e(n)}</td><td>{e(v)}</td><td>{e(c)}</td><td>{e(b)}</td></tr>"
                   for n, v, c, b in table_rows(results["metrics"]))
    skipped = "".join(f"<p class=note>{e(r['skipped'])}</p>" for r in results["metrics"].values() if "skipped" in r)
    settings = e(json.dumps(_finite(results["settings"]), indent=2))
    pairing = e("\n".join(results["pairing_summary"]))

    cols = [("masks", "mask"), ("real", "real"), ("fake", "generated")]
    cols = [(k, title) for k, title in cols if k in sources]
    head = "".join(f"<th>{t}</th>" for _, t in cols) + "<th>id / caption</th>"
    grid = []
    for i in ids:
        cells = "".join(f"<td>{_mask_thumb(sources[k][i]) if k == 'masks' else _thumb(sources[k][i])}</td>"
                        for k, _ in cols)
        grid.append(f"<tr>{cells}<td class=cap><b>{e(i)}</b><br>{e(captions.get(i, ''))}</td></tr>")

    page = f"""<!doctype html>
<html><head><meta charset="utf-8"><title>Face-MoGLE evaluation</title>
<style>
body{{font-family:system-ui,sans-serif;margin:2em;color:#222}} table{{border-collapse:collapse}}
td,th{{border:1px solid #ccc;padding:4px 8px;text-align:left;vertical-align:top}}
td img{{display:block;width:{THUMB}px;height:auto}} .cap{{max-width:22em;font-size:90%}}
.note{{color:#a60}} pre{{background:#f6f6f6;padding:1em;overflow:auto}}
</style></head><body>
<h1>Face-MoGLE evaluation</h1>
<p>{e(results['created'])} &middot; generated: {e(str(results['pairing']['folders'].get('fake', '')))}</p>
<h2>Metrics</h2>
<table><tr><th>metric</th><th>value</th><th>images</th><th>better</th></tr>{rows}</table>{skipped}
<h2>Pairing</h2><pre>{pairing}</pre>
<h2>Samples</h2>
<table><tr>{head}</tr>{''.join(grid)}</table>
<h2>Settings</h2><pre>{settings}</pre>
</body></html>
"""
    write_atomic(path, page)
