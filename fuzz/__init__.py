"""Property-based exploration of prefix-attention kernels: strategies, runs, reproducers."""
