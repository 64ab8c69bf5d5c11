"""The one error type of the evaluation suite: a bad input, explained in one line."""

from __future__ import annotations


class EvalError(Exception):
    """A user-facing problem (missing file, bad flag, nothing to pair). The CLI prints its message
    on one line and exits with status 2; no traceback."""


def one_line(exc: BaseException) -> str:
    """A single-line description of any exception.

    Errors raised inside DataLoader workers come back re-wrapped with the worker's traceback in the
    message; the useful part is then the last line ("SomeError: message"), so we keep that one.
    """
    text = str(exc).strip()
    if "Original Traceback" in text:
        lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
        text = lines[-1] if lines else text
        head, sep, tail = text.partition(": ")
        if sep and head.replace(".", "").replace("_", "").isalnum():  # drop "pkg.mod.ErrorType: "
            text = tail
    text = " ".join(text.split())
    return text or type(exc).__name__
