"""Property-based exploration of prefix-attention kernels: strategies, runs, reproducers."""

from prefix_referee._old_names import adopt

adopt(__name__)  # loaded as 'fuzz' from a checkout: be prefix_referee.fuzz
