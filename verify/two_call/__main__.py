"""``python -m verify.two_call``: see :mod:`verify.two_call.report`."""

from verify.two_call.report import main

if __name__ == "__main__":
    raise SystemExit(main())
