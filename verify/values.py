"""Input values from a counter-based generator: the same bits on every device.

Element ``i`` of request ``r``'s ``q`` (or ``k``, ``v``) is a pure function of the
request's stream and ``i``: an integer hash (32-bit arithmetic, exact in int64 tensors on
any device) picks a point between two entries of a table of normal quantiles, and the
interpolation is two correctly rounded float32 operations. So a case materializes to the
same tensors on a CPU and a GPU (a reproducer found on one replays on the other), the
whole batch is generated in a few vectorized passes on the device that needs it, and a
request has the same values in whatever batch holds it: packing cases into one batch
changes nothing about each case.
"""

from __future__ import annotations

import functools

import torch
from torch import Tensor

_MASK32 = 0xFFFFFFFF
_MASK64 = (1 << 64) - 1
# Normal quantiles at 2**16 + 1 evenly spaced probabilities: a value interpolates between
# two neighbours, so tails reach about +-4.2 and the distribution is smooth.
_TABLE_BITS = 16
# Streams per request: q, k, v, the outlier masks of k and v, and in an FP8 cache the
# masks of k's and v's saturated codes.
STREAMS = {"q": 0, "k": 1, "v": 2, "k_outliers": 3, "v_outliers": 4, "k_saturated": 5,
           "v_saturated": 6}
# FP8 formats: mantissa bits, and the exponent of the smallest normal number.
FP8_FORMATS = {torch.float8_e4m3fn: (3, -6), torch.float8_e5m2: (2, -14)}


def _splitmix64(x: int) -> int:
    """One step of SplitMix64 on Python integers (exact): seeds to well-mixed keys."""
    x = (x + 0x9E3779B97F4A7C15) & _MASK64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK64
    return x ^ (x >> 31)


def request_stream(case_seed: int, index: int) -> int:
    """The stream of request ``index`` of a case whose own seed is ``case_seed``."""
    return _splitmix64(_splitmix64(case_seed) ^ index) >> 1  # below 2**63, a valid seed


def stream_keys(stream: int, tensor: str) -> tuple[int, int]:
    """Two 32-bit keys of one tensor's values within a request's stream."""
    mixed = _splitmix64(_splitmix64(stream) ^ STREAMS[tensor])
    return mixed & _MASK32, mixed >> 32


def _mul32(x: Tensor, constant: int) -> Tensor:
    """``x * constant mod 2**32`` for ``x`` in [0, 2**32) held in int64, without overflow."""
    low = x * (constant & 0xFFFF)
    high = ((x * (constant >> 16)) & 0xFFFF) << 16
    return (low + high) & _MASK32


def _hash32(x: Tensor) -> Tensor:
    """lowbias32 (Wellons' integer hash) on values in [0, 2**32) held in int64."""
    x = x ^ (x >> 16)
    x = _mul32(x, 0x7FEB352D)
    x = x ^ (x >> 15)
    x = _mul32(x, 0x846CA68B)
    return x ^ (x >> 16)


def hashed_bits(counter: Tensor, key_a: Tensor, key_b: Tensor) -> Tensor:
    """32 random bits per element: ``counter`` int64 (elements), keys broadcast to it.

    One hash round: streams differ by an XOR of the counter (key_a) and of the output
    (key_b); two requests share values only if their keys' XOR is smaller than their
    lengths, a chance of about one in 30000 for the largest cases.
    """
    high = (counter >> 32) * 0x9E3779B9 & _MASK32
    return _hash32((counter & _MASK32) ^ high ^ key_a) ^ key_b


@functools.cache
def _quantiles(device: torch.device) -> Tensor:
    size = (1 << _TABLE_BITS) + 1
    p = (torch.arange(size, dtype=torch.float64) + 0.5) / size
    return torch.special.ndtri(p).float().to(device)


def normal_from_bits(bits: Tensor) -> Tensor:
    """Float32 standard-normal values from 32-bit hashes (deterministic on every device)."""
    table = _quantiles(bits.device)
    index = bits >> (32 - _TABLE_BITS)
    fraction = (bits & ((1 << (32 - _TABLE_BITS)) - 1)).float() / float(1 << (32 - _TABLE_BITS))
    low = table[index]
    step = table[index + 1] - low
    return low + step * fraction


def below(bits: Tensor, probability: float) -> Tensor:
    """True with ``probability`` per element (an integer comparison: exact everywhere)."""
    return bits < int(probability * (1 << 32))


def round_to_fp8(x: Tensor, dtype: torch.dtype) -> Tensor:
    """float32 ``x`` rounded to nearest even in FP8 ``dtype``'s grid, as float32.

    Integer operations on the float32 bits (normal numbers) and a scaling by a power of
    two (subnormals): exact on every device, so the FP8 codes are the same bits on a CPU
    and a GPU whatever their own float-to-FP8 conversions do. ``x`` must lie within the
    format's finite range; the result converts to ``dtype`` exactly.
    """
    mantissa, min_exponent = FP8_FORMATS[dtype]
    magnitude = x.abs()
    drop = 23 - mantissa
    bits = magnitude.view(torch.int32).long()
    bits = (bits + (1 << (drop - 1)) - 1 + ((bits >> drop) & 1)) >> drop << drop
    normal = bits.to(torch.int32).view(torch.float32)
    quantum = 2.0 ** (min_exponent - mantissa)
    subnormal = torch.round(magnitude / quantum) * quantum
    rounded = torch.where(magnitude < 2.0**min_exponent, subnormal, normal)
    return torch.where(x < 0, -rounded, rounded)
