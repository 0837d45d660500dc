"""The suite's hypothesis profiles: one definition for its own tests and the pytest plugin.

``ci`` (the default under ``CI``: derandomized, no database, a fixed example budget, so
a red gate replays), ``dev`` (the default elsewhere: random, a few more examples),
``nightly`` (long exploration, every phase) and ``gpu`` (an H100 or H200: larger
shapes cost more, so fewer examples). None has a deadline: a first call materializes the
reference and may compile a kernel.

The plugin applies them to its packaged tests only, without registering them, so an
engine's own profiles of the same names stay untouched; the suite's own tests register
them (:func:`register_hypothesis_profiles`) and pick one with ``HYPOTHESIS_PROFILE``.
"""

from __future__ import annotations

import os

from hypothesis import HealthCheck, Phase, settings

# Built on hypothesis' own defaults, not on whatever profile is loaded when this is imported.
_BASE = settings(settings.get_profile("default"), deadline=None, print_blob=True,
                 suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

HYPOTHESIS_PROFILES: dict[str, settings] = {
    "ci": settings(_BASE, derandomize=True, database=None, max_examples=25),
    "dev": settings(_BASE, max_examples=40),
    "nightly": settings(_BASE, max_examples=2000, phases=list(Phase)),
    "gpu": settings(_BASE, derandomize=True, database=None, max_examples=60),
}


def default_hypothesis_profile() -> str:
    """The profile when none is named: ``ci`` under ``CI``, ``dev`` elsewhere."""
    return "ci" if os.environ.get("CI") else "dev"


def register_hypothesis_profiles() -> None:
    """Register every profile under its name (``settings.load_profile`` then finds it)."""
    for name, profile in HYPOTHESIS_PROFILES.items():
        settings.register_profile(name, profile)
