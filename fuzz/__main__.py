"""``python -m prefix_referee.fuzz`` (``python -m fuzz`` in a checkout): see :mod:`fuzz.cli`."""

from prefix_referee.fuzz.cli import main

# Worker processes import the main module again (as __mp_main__): only run here.
if __name__ == "__main__":
    raise SystemExit(main())
