"""``python -m prefix_referee.verify.two_call_analysis``: see :mod:`.report`."""

from prefix_referee.verify.two_call_analysis.report import main

if __name__ == "__main__":
    raise SystemExit(main())
