"""The curated regression cases, shipped as package data so installed copies find them.

``*.json`` here: one case per planted fault and per adversarial layout, each with the
verdict every target must give (``python -m fuzz golden``); ``findings/``: reproducers
of behaviour seen in real kernels; ``two_call/summary.json``: the two-call error report
a test re-derives.
"""

from pathlib import Path

from prefix_referee._old_names import adopt

GOLDEN_DIR = Path(__file__).resolve().parent
FINDINGS_DIR = GOLDEN_DIR / "findings"
TWO_CALL_SUMMARY = GOLDEN_DIR / "two_call" / "summary.json"

adopt(__name__)  # loaded as 'golden' from a checkout: be prefix_referee.golden
