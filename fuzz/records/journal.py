"""A run's directory: everything a run learns is on disk as soon as it is learned.

Each run gets a directory of its own under ``--report-dir`` (``run-<time>-seed<seed>``,
created atomically, with ``latest`` pointing at the newest), so two runs never overwrite
each other. ``cases.jsonl`` gets one line per judged case as it is judged; reproducers
are written when their failure is found and rewritten when it is shrunk; ``report.json``
is replaced atomically, at most every few seconds and at the end (also after Ctrl-C or
SIGTERM); ``workers.log`` collects what the kernels print.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any, TextIO

# Seconds between report snapshots while a run goes on.
SNAPSHOT_INTERVAL = 2.0


class JournalError(Exception):
    """The report directory cannot be used; the message is one line."""


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


def write_atomically(path: Path, text: str) -> None:
    """Replace ``path`` with ``text`` so readers see the old file or the new, never half."""
    partial = path.with_name(f".{path.name}.partial")
    partial.write_text(text)
    os.replace(partial, path)


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
        else:
            raise JournalError(f"--report-dir {base}: no free run directory name")
        self.path = path
        self.reproducers = path / "reproducers"
        self.reproducers.mkdir()
        self.log = path / "workers.log"
        latest = base / "latest"
        try:
            if latest.is_symlink() or not latest.exists():
                latest.unlink(missing_ok=True)
                latest.symlink_to(path.name)
        except OSError:
            pass  # a filesystem without symlinks: the run directory is printed anyway
        self._cases: TextIO = (path / "cases.jsonl").open("a", buffering=1)
        self._last_snapshot = 0.0

    def record_case(self, record: dict[str, Any]) -> None:
        self._cases.write(json.dumps(record, separators=(",", ":")) + "\n")

    def snapshot(self, name: str, data: Any, *, force: bool = False) -> bool:
        """Write ``name`` (JSON) now if ``force`` or the last snapshot is old enough."""
        now = time.monotonic()
        if not force and now - self._last_snapshot < SNAPSHOT_INTERVAL:
            return False
        write_atomically(self.path / name, json.dumps(data, indent=1) + "\n")
        self._last_snapshot = now
        return True

    def close(self) -> None:
        self._cases.close()
