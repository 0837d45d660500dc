"""The float64 reference as a target: the suite's self-check and a timing baseline."""

from __future__ import annotations

from torch import Tensor

from prefix_referee.references import reference_attention
from prefix_referee.verify.capabilities import Capabilities
from prefix_referee.verify.case import KV_DTYPES
from prefix_referee.verify.materialize import MaterializedCase
from prefix_referee.verify.target import Target


class ReferenceTarget(Target):
    def __init__(self) -> None:
        super().__init__("reference", "float64 exact-mask reference, rounded to the case dtype",
                         Capabilities(kv_dtypes=frozenset({None, *KV_DTYPES}),
                                      deterministic=True, batch_invariant=True,
                                      placement_invariant=True, claimed_on=frozenset({"cpu"})))

    def run(self, case: MaterializedCase) -> tuple[Tensor, Tensor | None]:
        out, lse = reference_attention(case.batch())
        return out.to(case.dtype), lse.float()
