"""How far the two-call merge path is from exact attention: measures, sweeps, the report.

``python -m prefix_referee.verify.two_call_analysis`` prints the report (docs/two_call.md).
"""
