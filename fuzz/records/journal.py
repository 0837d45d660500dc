"""A run's directory: everything a run learns is on disk as soon as it is learned.

Each run gets a directory of its own under ``--report-dir`` (``run-<time>-seed<seed>``,
created atomically, with ``latest`` pointing at the newest), so two runs never overwrite
each other. ``cases.jsonl`` gets one line per judged case as it is judged (one ``write``
each, so a killed run leaves whole lines); reproducers are written when their failure is
found and rewritten when it is shrunk; ``report.json`` is replaced atomically every
``SNAPSHOT_INTERVAL`` seconds while the run goes on (marked partial) and at the end (also
after Ctrl-C or SIGTERM); ``workers.log`` collects what the kernels print.

A write that fails (a full disk, a directory removed or made read-only under the run)
raises :class:`JournalError` naming the file, and leaves no half-written file: a file is
replaced whole or not at all, and a line of ``cases.jsonl`` is appended whole or cut off.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

# Seconds between report snapshots while a run goes on.
SNAPSHOT_INTERVAL = 2.0


class JournalError(Exception):
    """The report directory cannot be used; the message is one line."""


def json_number(value: float | None) -> float | str | None:
    """JSON has no infinity: a non-finite number is written as a string."""
    return str(value) if value is not None and not math.isfinite(value) else value


def check_writable_dir(path: Path, what: str) -> None:
    """Fail in one line, before any work, if ``path`` cannot be a directory we write in."""
    if path.exists() and not path.is_dir():
        raise JournalError(f"{what} {path} exists and is not a directory")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise JournalError(f"{what} {path} cannot be created: {exc.strerror}") from None
    if not os.access(path, os.W_OK | os.X_OK):
        raise JournalError(f"{what} {path} is not writable")


def check_writable_file(path: Path, what: str) -> None:
    """Fail in one line if ``path`` cannot be written as a file."""
    if path.is_dir():
        raise JournalError(f"{what} {path} is a directory")
    check_writable_dir(path.parent, f"the directory of {what}")


def _append(descriptor: int, data: bytes) -> int:
    """One ``write`` to an append-only file: the bytes written."""
    return os.write(descriptor, data)


def _cannot(path: Path, exc: OSError) -> JournalError:
    return JournalError(f"cannot write {path}: {exc.strerror or exc}")


def partial_path(path: Path) -> Path:
    """Where ``path`` is written before it replaces ``path`` (hidden, same suffix, so a
    writer that goes by the suffix writes the same format)."""
    return path.with_name(f".{path.stem}.partial{path.suffix}")


def replace_atomically(path: Path, write: Callable[[Path], None]) -> None:
    """Call ``write`` on a scratch file beside ``path``, then put it in ``path``'s place,
    so readers see the old file or the new, never half; :class:`JournalError` if either
    fails (the scratch file is removed)."""
    partial = partial_path(path)
    try:
        write(partial)
        os.replace(partial, path)
    except BaseException as exc:  # a failed write, or Ctrl-C in the middle of one
        with contextlib.suppress(OSError):
            partial.unlink()
        if isinstance(exc, OSError):
            raise _cannot(path, exc) from None
        raise


def write_atomically(path: Path, text: str) -> None:
    """Replace ``path`` with ``text`` (see :func:`replace_atomically`)."""
    replace_atomically(path, lambda partial: partial.write_text(text))


class RunDirectory:
    """The directory of one run."""

    def __init__(self, base: Path, seed: int) -> None:
        check_writable_dir(base, "--report-dir")
        stamp = time.strftime("%Y%m%d-%H%M%S")
        for attempt in range(1, 1000):
            suffix = "" if attempt == 1 else f"-{attempt}"
            path = base / f"run-{stamp}-seed{seed}{suffix}"
            try:
                path.mkdir()
                break
            except FileExistsError:
                continue
            except OSError as exc:
                raise JournalError(f"--report-dir {base}: cannot create {path.name}: "
                                   f"{exc.strerror}") from None
        else:
            raise JournalError(f"--report-dir {base}: no free run directory name")
        self.path = path
        self.reproducers = path / "reproducers"
        self.log = path / "workers.log"
        self.cases = path / "cases.jsonl"
        try:
            self.reproducers.mkdir()
            self._cases = os.open(self.cases, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        except OSError as exc:
            raise _cannot(self.reproducers if not self.reproducers.exists() else self.cases,
                          exc) from None
        latest = base / "latest"
        try:
            if latest.is_symlink() or not latest.exists():
                link = partial_path(latest)
                link.unlink(missing_ok=True)
                link.symlink_to(path.name)
                os.replace(link, latest)  # never a moment without one
        except OSError:
            pass  # a filesystem without symlinks: the run directory is printed anyway
        self._last_snapshot = 0.0

    def record_case(self, record: dict[str, Any]) -> None:
        """Append one line to cases.jsonl, whole: a write cut short is cut off again."""
        line = (json.dumps(record, separators=(",", ":")) + "\n").encode()
        size = os.fstat(self._cases).st_size
        try:
            written = _append(self._cases, line)
            if written != len(line):
                raise OSError(28, os.strerror(28))  # ENOSPC: a short write to a regular file
        except OSError as exc:
            with contextlib.suppress(OSError):
                os.ftruncate(self._cases, size)
            raise _cannot(self.cases, exc) from None

    def due(self) -> bool:
        """Whether the last snapshot is ``SNAPSHOT_INTERVAL`` seconds old."""
        return time.monotonic() - self._last_snapshot >= SNAPSHOT_INTERVAL

    def snapshot(self, name: str, data: Any | Callable[[], Any], *, force: bool = False
                 ) -> bool:
        """Write ``name`` (JSON; ``data`` may be a function that builds it) now if ``force``
        or :meth:`due`."""
        if not force and not self.due():
            return False
        if callable(data):
            data = data()
        write_atomically(self.path / name, json.dumps(data, indent=1) + "\n")
        self._last_snapshot = time.monotonic()
        return True

    def close(self) -> None:
        if self._cases >= 0:
            os.close(self._cases)
            self._cases = -1
