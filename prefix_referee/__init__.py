"""The prefix-attention referee: one namespace for the installed packages.

``prefix_referee.references`` (the float64 ground truth), ``prefix_referee.verify`` (cases,
targets, the tolerance policy), ``prefix_referee.fuzz`` (runs, findings, reports, the pytest
plugin) and ``prefix_referee.golden`` (the curated cases). In the repository they are the
top-level folders ``references/``, ``verify/``, ``fuzz/`` and ``golden/``; installed, they
live here, so that they shadow no other distribution's ``verify``, ``fuzz`` or ``golden``.
The old top-level names still import, with a DeprecationWarning, where nothing else owns
them (:mod:`prefix_referee._old_names`).
"""

from __future__ import annotations

from pathlib import Path

from prefix_referee._old_names import install

_checkout = Path(__file__).resolve().parent.parent
if not (Path(__file__).parent / "verify").is_dir() and (_checkout / "verify").is_dir():
    # A checkout, installed in editable mode or not at all: the packages are its top-level
    # folders.
    __path__.append(str(_checkout))

install()
