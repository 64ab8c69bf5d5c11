"""test.py's output folder: `manifest.json` records the settings and every file test.py wrote there
(path → digest of its bytes), and only files recorded so, with those bytes, are ever skipped as
done or deleted by `--overwrite`. Anything else in `face/` or `text/` is foreign: the folder is refused.

Writers: one process per shard holds `OUT/.lock` (or `OUT/.lock-shard-I-of-N`) for its whole run, so a
second run of the same shard is refused naming the first; the shards of one job share the folder,
and each change of the manifest (read, check the settings, add files, rename the files into place)
happens under `OUT/.manifest.lock`, so no shard loses another's records.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Callable, Optional

from .locks import FolderBusy, FolderLock
from .utils import atomic_write, stage_file

MANIFEST = "manifest.json"
SUBFOLDERS = ("face", "text")
MANIFEST_LOCK = ".manifest.lock"
MANIFEST_WAIT_S = 600  # a shard waits this long for another to finish its (short) manifest update


class OutputFolderError(ValueError):
    """The output folder cannot be used as asked; the message is one line."""


def digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:32]


def file_digest(path: Path) -> Optional[str]:
    try:
        return digest(path.read_bytes())
    except OSError:
        return None


def run_lock(out: Path, shard: Optional[tuple[int, int]]) -> FolderLock:
    name = ".lock" if shard is None else f".lock-shard-{shard[0]}-of-{shard[1]}"
    return FolderLock(out, "test.py output folder" + ("" if shard is None else f" (shard {shard[0]}/{shard[1]})"), name)


def manifest_lock(out: Path):
    from filelock import FileLock

    return FileLock(str(out / MANIFEST_LOCK), timeout=MANIFEST_WAIT_S)


def read(out: Path) -> Optional[dict]:
    """The manifest, or None when there is none or it is unreadable (then no file counts as ours)."""
    try:
        data = json.loads((out / MANIFEST).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def own_files(manifest: Optional[dict], out: Path) -> dict[str, str]:
    """{relative path: digest} of the files the manifest says test.py wrote. A manifest written before
    digests were recorded lists only the ids done: their face and caption are taken as they are now."""
    if manifest is None:
        return {}
    if isinstance(manifest.get("files"), dict):
        return dict(manifest["files"])
    files = {}
    for i in manifest.get("done") or []:
        for rel in (f"face/{i}.jpg", f"text/{i}.txt"):
            if (d := file_digest(out / rel)) is not None:
                files[rel] = d
    return files


def write(out: Path, settings: dict, files: dict[str, str]) -> None:
    done = sorted(int(rel[5:-4]) for rel in files if rel.startswith("face/") and rel[5:-4].isdigit())
    text = json.dumps(dict(settings, done=done, files=dict(sorted(files.items()))), indent=1) + "\n"
    atomic_write(out / MANIFEST, lambda tmp: Path(tmp).write_text(text))


def survey(out: Path, files: dict[str, str], readable: Callable[[Path], bool]) -> tuple[set[str], list[str], list[str]]:
    """(ours: recorded files with their recorded bytes; broken: recorded faces that no longer decode,
    e.g. cut by a crash: ours to write again; foreign: every other file in face/ and text/)."""
    ours, broken, foreign = set(), [], []
    for sub in SUBFOLDERS:
        folder = out / sub
        if not folder.is_dir():
            continue
        for path in sorted(folder.iterdir()):
            if path.name.startswith("."):  # our temp files, or the user's hidden ones: never touched
                continue
            rel = f"{sub}/{path.name}"
            if rel in files and path.is_file() and file_digest(path) == files[rel]:
                ours.add(rel)
            elif rel in files and sub == "face" and path.is_file() and not readable(path):
                broken.append(rel)
            else:
                foreign.append(rel)
    return ours, broken, foreign


def refuse_foreign(out: Path, files: dict[str, str], foreign: list[str], action: str) -> None:
    if not foreign:
        return
    changed = [rel for rel in foreign if rel in files]
    why = (f"{changed[0]} changed since test.py wrote it" if changed
           else f"e.g. {', '.join(foreign[:3])}: not in its {MANIFEST}")
    raise OutputFolderError(
        f"{out} holds {len(foreign)} file(s) in face/ or text/ that test.py did not write ({why}); {action} only "
        "what test.py wrote there: move them away, or choose another --output_dir")


def check_no_other_writer(out: Path, mine: FolderLock) -> None:
    """--overwrite deletes every shard's files: refused while another shard of this folder runs."""
    for path in sorted(out.glob(".lock*")):
        if path.name == mine.path.name or path.name.endswith(".holder"):
            continue
        other = FolderLock(out, "test.py output folder", path.name)
        try:
            other.acquire()
        except FolderBusy as err:
            raise OutputFolderError(f"--overwrite: {err}") from None
        other.release()


def clear(out: Path, ours: set[str], broken: list[str]) -> None:
    """--overwrite: delete the files test.py wrote (checked by `survey`), then the manifest."""
    for rel in sorted(ours) + list(broken):
        (out / rel).unlink(missing_ok=True)
    (out / MANIFEST).unlink(missing_ok=True)


def commit(out: Path, settings: dict, keys: tuple[str, ...], new: dict[str, bytes]) -> None:
    """Put `new` ({relative path: bytes}) in place: staged beside their targets, then, under the
    manifest lock, recorded and renamed. The record comes first: a kill in between leaves a recorded
    file missing or with other bytes, which is written again, never a file nobody recorded."""
    staged = {rel: stage_file(out / rel, data) for rel, data in new.items()}
    try:
        with manifest_lock(out):
            current = read(out) or {}
            if any(current.get(k) != settings.get(k) for k in keys):
                raise OutputFolderError(f"{out}/{MANIFEST} was replaced by another run with other settings "
                                        "(--overwrite?) while this one ran: stopping; its images are its own now")
            files = own_files(current, out)
            files.update({rel: digest(data) for rel, data in new.items()})
            write(out, settings, files)
            for rel, tmp in staged.items():
                os.replace(tmp, out / rel)
    finally:
        for tmp in staged.values():
            tmp.unlink(missing_ok=True)
