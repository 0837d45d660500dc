"""Float64 ground truth and the low-precision baseline the tolerance policy scales by."""

from references.lowprec import lowprec_attention
from references.reference import ScoreBias, reference_attention

__all__ = ["ScoreBias", "lowprec_attention", "reference_attention"]
