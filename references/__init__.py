"""Float64 ground truth and the low-precision baseline the tolerance policy scales by.

Self-contained (it imports nothing else of the suite): a packed batch where each query
row sees one interval of packed keys (:mod:`references.batch`), the mask semantics that
produce those intervals (:mod:`references.mask`), the float64 reference and the baseline.
"""

from prefix_referee._old_names import adopt
from prefix_referee.references.batch import Batch, LogWeight, expand_kv_heads
from prefix_referee.references.lowprec import lowprec_attention
from prefix_referee.references.reference import reference_attention

__all__ = ["Batch", "LogWeight", "expand_kv_heads", "lowprec_attention", "reference_attention"]

adopt(__name__)  # loaded as 'references' from a checkout: be prefix_referee.references
