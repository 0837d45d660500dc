"""The pytest plugin: --prefix-target, its packaged tests, hypothesis profiles, statistics."""
