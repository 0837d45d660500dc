"""Kernels under verification, each checked against the float64 references."""
