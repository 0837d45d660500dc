"""What a kernel under test accepts: cases outside it are skipped with a reason, not failed."""

from __future__ import annotations

from dataclasses import dataclass

from verify.case import DTYPES, CaseSpec


@dataclass(frozen=True)
class Capabilities:
    """What a target accepts; cases outside it are skipped with a reason, not failed."""

    devices: frozenset[str] = frozenset({"cpu", "cuda"})
    dtypes: frozenset[str] = frozenset(DTYPES)
    head_dims: frozenset[int] | None = None  # None: any head dim
    head_dim_v_differs: bool = True
    paged: bool = False  # reads the paged KV cache when the case has one
    sliding_window: bool = True
    softcap: bool = True
    lse: bool = True
    overlapping_ranges: bool = True
    max_total_tokens: int | None = None  # e.g. the Triton interpreter's practical limit

    def unsupported_reason(self, spec: CaseSpec, device: str) -> str | None:
        """Why this target cannot run ``spec`` on ``device``, or None."""
        checks = [
            (device not in self.devices, f"device {device} (runs on {sorted(self.devices)})"),
            (spec.dtype not in self.dtypes, f"dtype {spec.dtype}"),
            (self.head_dims is not None and spec.head_dim not in self.head_dims,
             f"head_dim {spec.head_dim}"),
            (not self.head_dim_v_differs and spec.value_dim != spec.head_dim,
             "head_dim_v != head_dim"),
            (not self.sliding_window and spec.sliding_window is not None, "sliding window"),
            (not self.softcap and spec.softcap is not None, "softcap"),
            (not self.overlapping_ranges and spec.allow_overlapping_ranges, "overlapping ranges"),
            (self.max_total_tokens is not None and spec.total_k > self.max_total_tokens,
             f"{spec.total_k} keys > {self.max_total_tokens}"),
        ]
        for unsupported, what in checks:
            if unsupported:
                return f"unsupported: {what}"
        return None
