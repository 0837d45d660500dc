"""Drawing cases: strategies, spaces, model presets, compile-aware streams, coverage."""
