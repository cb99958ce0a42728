"""A tiny progress bar for long loops: drawn on stderr only when stderr is a terminal.

    for item in progress(items, label="runs"):
        ...

When the stream is not a TTY (piped, redirected, under pytest) nothing is written at all,
so output stays clean for scripts. Redraws are throttled so very fast loops stay fast.
"""
from __future__ import annotations

import sys
import time

BAR_WIDTH = 24
REDRAW_INTERVAL_SECONDS = 0.1


def _total_of(iterable, total):
    if total is not None:
        return int(total)
    try:
        return len(iterable)
    except TypeError:
        return None


def render(done: int, total: int | None, label: str = "") -> str:
    """One line of the bar (without the carriage return), e.g. 'runs [######------]  5/10'."""
    prefix = f"{label} " if label else ""
    if not total:
        return f"{prefix}{done}"
    filled = min(BAR_WIDTH, BAR_WIDTH * done // total)
    bar = "#" * filled + "-" * (BAR_WIDTH - filled)
    width = len(str(total))
    return f"{prefix}[{bar}] {done:>{width}}/{total}"


def _is_terminal(stream) -> bool:
    isatty = getattr(stream, "isatty", None)
    try:
        return bool(isatty and isatty())
    except (OSError, ValueError):
        return False


def progress(iterable, total: int | None = None, label: str = "", stream=None):
    """Yield the items of `iterable`, drawing a bar on `stream` (default stderr) if it is a TTY."""
    stream = sys.stderr if stream is None else stream
    if not _is_terminal(stream):
        yield from iterable
        return
    total = _total_of(iterable, total)
    done = 0
    last_draw = float("-inf")
    try:
        for item in iterable:
            yield item
            done += 1
            now = time.monotonic()
            if now - last_draw >= REDRAW_INTERVAL_SECONDS or done == total:
                stream.write("\r" + render(done, total, label))
                stream.flush()
                last_draw = now
    finally:
        if done:
            stream.write("\r" + render(done, total, label) + "\n")
            stream.flush()
