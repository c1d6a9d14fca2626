"""Line-oriented reading with bad-line accounting.

Real dumps contain a few broken lines; we skip them with one summary line per
file, but a file with more than `max_bad_fraction` bad lines is almost surely the
wrong format, so that is an error naming the file and the first bad line.
"""
from __future__ import annotations

import gzip
import logging
import os
import zlib
from typing import Callable, Iterator, TypeVar

from rqsid_jax.errors import DataError

T = TypeVar("T")
MAX_BAD_FRACTION = 0.01


def open_text(path: str):
    """Opens plain or gzipped text; a missing file is a DataError naming the path."""
    if not os.path.exists(path):
        raise DataError(f"{path}: file not found")
    if path.endswith(".gz"):
        return gzip.open(path, "rt", encoding="utf-8", errors="replace")
    return open(path, "rt", encoding="utf-8", errors="replace")


def require_file(path: str, expected: str) -> str:
    """The path, or a DataError saying it is missing and what it should hold."""
    if not os.path.exists(path):
        raise DataError(f"{path}: file not found (expected {expected})")
    return path


def read_records(
    path: str,
    parse: Callable[[str], T],
    max_bad_fraction: float = MAX_BAD_FRACTION,
) -> Iterator[tuple[int, T]]:
    """Yields (line_number, parse(line)) for every good non-empty line of `path`.

    `parse` raises ValueError/KeyError/TypeError/SyntaxError for a bad line. A truncated or
    corrupt gzip stream is a DataError naming the file, however little of it is missing.
    """
    total = bad = 0
    first_bad: tuple[int, str] | None = None
    lineno = 0
    with open_text(path) as f:
        it = iter(f)
        while True:
            try:
                raw = next(it)
            except StopIteration:
                break
            except (EOFError, OSError, zlib.error) as e:
                # A cut or corrupt compressed file is never "a few bad lines": going on with the
                # part before the damage would silently drop users (a fraction of the data).
                raise DataError(f"{path}: truncated or corrupt compressed file after line {lineno} "
                                f"({type(e).__name__}: {e}); re-download or re-copy it") from None
            lineno += 1
            line = raw.strip()
            if not line:
                continue
            total += 1
            try:
                rec = parse(line)
            except (ValueError, KeyError, TypeError, SyntaxError, IndexError, MemoryError) as e:
                bad += 1
                if first_bad is None:
                    first_bad = (lineno, f"{type(e).__name__}: {e}"[:120])
                continue
            yield lineno, rec
    if bad:
        frac = bad / max(total, 1)
        where = f"first bad line {first_bad[0]} ({first_bad[1]})"
        if frac > max_bad_fraction:
            raise DataError(
                f"{path}: {bad} of {total} lines are malformed ({frac:.1%} > {max_bad_fraction:.0%}); {where}"
            )
        logging.warning("%s: skipped %d of %d malformed lines; %s", path, bad, total, where)
