"""matplotlib for the plots, which are optional: ``pip install prefix-attention-referee[plots]``.

Reports and verdicts never need it; a run without it writes every report but the PNGs
and says why in one line.
"""

from __future__ import annotations

from types import ModuleType

INSTALL_HINT = "pip install 'prefix-attention-referee[plots]'"


class PlotsUnavailable(RuntimeError):
    """matplotlib is not installed; the message says how to get it."""


def pyplot() -> ModuleType:
    """``matplotlib.pyplot`` on the Agg backend (no display needed)."""
    try:
        import matplotlib
    except ImportError:
        raise PlotsUnavailable(f"plots need matplotlib ({INSTALL_HINT})") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt
