"""Worked examples: how an engine's kernel plugs into the suite (docs/adapting.md)."""
