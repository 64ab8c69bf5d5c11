"""One writer per folder: an exclusive OS file lock (the `filelock` package) plus a note of who holds it.

The lock is an flock on `FOLDER/NAME`: the operating system drops it when the holder exits, even
when it is killed, so a lock is never left stale. Beside it, `FOLDER/NAME.holder` says which
process holds it (pid, host, command, since when), so a refused second writer can name the holder.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import socket
import sys
from pathlib import Path
from typing import Optional

from .utils import atomic_write


class FolderBusy(RuntimeError):
    """Another process writes to this folder; the message is one line naming it."""


def _holder_note() -> dict:
    return {"pid": os.getpid(), "host": socket.gethostname(), "command": " ".join(sys.argv)[:300],
            "since": _dt.datetime.now().astimezone().isoformat(timespec="seconds")}


def _describe(note: Optional[dict]) -> str:
    if not note:
        return "another process (it has not recorded itself yet)"
    return f"pid {note.get('pid')} on {note.get('host')} since {note.get('since')} ({note.get('command')!r})"


class FolderLock:
    """`with FolderLock(folder, "the cache folder"):` or acquire()/release(); never waits: a folder
    already locked raises FolderBusy at once."""

    def __init__(self, folder: str | os.PathLike, what: str, name: str = ".lock"):
        from filelock import FileLock

        self.folder, self.what = Path(folder), what
        self.path = self.folder / name
        self.holder_path = self.folder / (name + ".holder")
        self._lock = FileLock(str(self.path))

    def acquire(self) -> "FolderLock":
        from filelock import Timeout

        self.folder.mkdir(parents=True, exist_ok=True)
        try:
            self._lock.acquire(timeout=0)
        except Timeout:
            raise FolderBusy(f"{self.what} {self.folder} is in use by {_describe(self.holder())}: wait for it to "
                             f"finish or stop it (two writers would mix their files), or choose another folder") from None
        text = json.dumps(_holder_note())
        atomic_write(self.holder_path, lambda tmp: Path(tmp).write_text(text))
        return self

    def holder(self) -> Optional[dict]:
        try:
            return json.loads(self.holder_path.read_text())
        except (OSError, ValueError):
            return None

    def release(self) -> None:
        if self._lock.is_locked:
            self.holder_path.unlink(missing_ok=True)
            self._lock.release()

    def __enter__(self) -> "FolderLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()
