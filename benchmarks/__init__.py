"""GPU benchmarks: scripts that print figures (ratios against baselines timed in the same run)."""
