"""Where a command may write: never onto one of its inputs, never into a data set.

Every file a command writes (image, sidecar JSON, source mask, gates map, eval JSON, test.py's
faces and captions) is checked here before any work starts, so a typo in `--output` cannot turn
into a replaced mask, face or `text.json`.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable, Optional

# A data set (MM-CelebA-HQ layout) is a folder holding mask/ or text.json; its files live in the
# folder itself (text.json, split files) and in these subfolders.
DATA_SUBFOLDERS = ("face", "mask", "text")


class OutputError(ValueError):
    """An output that would land on an input or in a data set; the message is one line."""


def is_data_set(folder: str | os.PathLike) -> bool:
    folder = Path(folder)
    return (folder / "mask").is_dir() or (folder / "text.json").is_file()


def data_set_holding(path: str | os.PathLike) -> Optional[Path]:
    """The data set whose files `path` would be among (its root or face/, mask/, text/), else None.
    Symbolic links are followed: a link into a data set is the data set."""
    parent = Path(path).resolve().parent
    if is_data_set(parent):
        return parent
    if parent.name in DATA_SUBFOLDERS and is_data_set(parent.parent):
        return parent.parent
    return None


def same_file(a: str | os.PathLike, b: str | os.PathLike) -> bool:
    """The same file, also through symbolic or hard links."""
    if Path(a).resolve() == Path(b).resolve():
        return True
    try:
        return os.path.samefile(a, b)
    except OSError:  # one of them does not exist yet
        return False


def check_outputs(outputs: dict[str, str | os.PathLike], inputs: dict[str, Iterable[str | os.PathLike]]) -> None:
    """Refuse (OutputError) an output that is one of the inputs or lies in a data set.

    outputs: {what it is (e.g. "the settings record"): path}; inputs: {which option: paths}.
    """
    for what, out in outputs.items():
        for option, paths in inputs.items():
            for path in paths:
                if path is not None and same_file(out, path):
                    raise OutputError(f"{what} {out} is the input {option} {path}: it would be overwritten; "
                                      "choose another output path")
        data = data_set_holding(out)
        if data is not None:
            raise OutputError(f"{what} {out} would write into the data set {data} (a folder with mask/ or "
                              "text.json): choose a path outside it")
