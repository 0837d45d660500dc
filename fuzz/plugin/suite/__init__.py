"""The packaged tests the pytest plugin collects for each ``--prefix-target`` (docs/plugin.md)."""
