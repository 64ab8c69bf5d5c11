"""Match generated images with real images, captions and masks by id (the file stem).

`outputs/run/face/27000.jpg` pairs with `data/mmcelebahq/face/27000.jpg`, `text/27000.txt` and
`mask/27000.png`. A folder that has a `face/` subfolder stands for that subfolder, so both a
data-set root and its `face/` folder can be passed.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from face_mogle.eval.errors import EvalError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp")
SHOW_IDS = 5  # how many ids an error or summary line names before "..."


def id_key(image_id: str) -> tuple:
    """Sort numeric ids as numbers (2 before 10), others after them by name."""
    return (0, int(image_id), "") if image_id.isdigit() else (1, 0, image_id)


def few(ids, limit: int = SHOW_IDS) -> str:
    ids = sorted(ids, key=id_key)
    shown = ", ".join(ids[:limit])
    return shown + (f", ... (+{len(ids) - limit} more)" if len(ids) > limit else "")


def image_folder(path: str | Path, flag: str) -> Path:
    """The folder holding the images: PATH/face if it exists, else PATH itself."""
    folder = Path(path)
    if not folder.is_dir():
        raise EvalError(f"{flag} {path}: no such directory")
    return folder / "face" if (folder / "face").is_dir() else folder


def index_folder(folder: Path, suffixes: tuple[str, ...], flag: str) -> dict[str, Path]:
    """{id: path} for the files in `folder` (not recursive) whose suffix is one of `suffixes`."""
    if not folder.is_dir():
        raise EvalError(f"{flag} {folder}: no such directory")
    found: dict[str, Path] = {}
    for path in folder.iterdir():
        if path.name.startswith(".") or path.suffix.lower() not in suffixes or not path.is_file():
            continue
        if path.stem in found:
            raise EvalError(f"{flag} {folder}: two files share the id {path.stem} "
                            f"({found[path.stem].name}, {path.name}); keep one")
        found[path.stem] = path
    return found


@dataclass
class Pairing:
    """The ids evaluated (present in every source a requested metric needs) and their files."""

    ids: list[str]
    sources: dict[str, dict[str, Path]]  # "fake", "real", "text", "masks" -> {id: path}
    folders: dict[str, Path]
    found: dict[str, int]  # files found per source
    missing: dict[str, list[str]] = field(default_factory=dict)  # generated ids absent from a source

    def paths(self, source: str) -> list[Path]:
        return [self.sources[source][i] for i in self.ids]

    def summary_lines(self) -> list[str]:
        n_fake = self.found["fake"]
        lines = [f"paired {len(self.ids)} of {n_fake} generated images"
                 + "".join(f"; {name}: {self.found[name]} found" for name in self.sources if name != "fake")]
        for name, ids in self.missing.items():
            if ids:
                lines.append(f"  {len(ids)} generated ids have no {name} file, skipped: {few(ids)}")
        return lines

    def to_json(self) -> dict:
        return {
            "paired": len(self.ids),
            "found": dict(self.found),
            "folders": {k: str(v) for k, v in self.folders.items()},
            "missing": {k: {"count": len(v), "ids": sorted(v, key=id_key)[:50]} for k, v in self.missing.items()},
        }


def read_caption(path: Path) -> str:
    """First line of a caption file (MM-CelebA-HQ's test protocol uses each image's first caption)."""
    try:
        with open(path, encoding="utf-8") as f:
            return f.readline().strip()
    except (OSError, UnicodeDecodeError) as e:
        raise EvalError(f"cannot read caption {path}: {e}") from None


def pair(fake: str | Path, real: str | Path | None = None, text: str | Path | None = None,
         masks: str | Path | None = None) -> Pairing:
    """Index the given folders and keep the generated ids found in all of them."""
    folders = {"fake": image_folder(fake, "--fake")}
    sources = {"fake": index_folder(folders["fake"], IMAGE_SUFFIXES, "--fake")}
    if not sources["fake"]:
        raise EvalError(f"--fake {folders['fake']}: no images ({', '.join(IMAGE_SUFFIXES)}) in it")
    if real is not None:
        folders["real"] = image_folder(real, "--real")
        sources["real"] = index_folder(folders["real"], IMAGE_SUFFIXES, "--real")
    if text is not None:
        folders["text"] = Path(text)
        sources["text"] = index_folder(folders["text"], (".txt",), "--text")
    if masks is not None:
        folders["masks"] = Path(masks)
        sources["masks"] = index_folder(folders["masks"], (".png",), "--masks")

    fake_ids = set(sources["fake"])
    ids = set(fake_ids)
    missing = {}
    for name, index in sources.items():
        if name == "fake":
            continue
        if not index:
            kind = "captions (.txt)" if name == "text" else "masks (.png)" if name == "masks" else "images"
            raise EvalError(f"--{name} {folders[name]}: no {kind} in it")
        ids &= set(index)
        missing[name] = sorted(fake_ids - set(index), key=id_key)
    if not ids:
        others = "; ".join(f"--{n} has {len(s)} (e.g. {few(s, 3)})" for n, s in sources.items() if n != "fake")
        raise EvalError(f"no ids pair: --fake has {len(fake_ids)} images (e.g. {few(fake_ids, 3)}); {others}; "
                        "files pair by name without extension (face/27000.jpg <-> 27000.png)")
    return Pairing(ids=sorted(ids, key=id_key), sources=sources, folders=folders,
                   found={k: len(v) for k, v in sources.items()}, missing=missing)
