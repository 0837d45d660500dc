"""Input values: a pure function of (stream, tensor, element) in integer arithmetic, so a
case materializes to the same bits on every device and in every batch."""

from __future__ import annotations

import math

import torch

from prefix_referee.verify import materialize, parse_case
from prefix_referee.verify.values import (
    _hash32,
    hashed_bits,
    normal_from_bits,
    request_stream,
    stream_keys,
)

MASK32 = 0xFFFFFFFF


def _mul32(x: int, c: int) -> int:
    return (x * c) & MASK32


def _lowbias32(x: int) -> int:
    """The hash in plain Python integers: what the tensor arithmetic must reproduce."""
    x ^= x >> 16
    x = _mul32(x, 0x7FEB352D)
    x ^= x >> 15
    x = _mul32(x, 0x846CA68B)
    return x ^ (x >> 16)


def test_tensor_hash_equals_the_integer_definition() -> None:
    xs = [0, 1, 2, 12345, 2**31 - 1, 2**31, 2**32 - 1, 0xDEADBEEF]
    got = _hash32(torch.tensor(xs, dtype=torch.long)).tolist()
    assert got == [_lowbias32(x) for x in xs]
    counters = torch.tensor([0, 7, 2**33 + 5, 2**40 - 1], dtype=torch.long)
    key_a, key_b = stream_keys(request_stream(42, 3), "k")
    bits = hashed_bits(counters, torch.tensor(key_a), torch.tensor(key_b)).tolist()
    want = [_lowbias32((c & MASK32) ^ (((c >> 32) * 0x9E3779B9) & MASK32) ^ key_a) ^ key_b
            for c in counters.tolist()]
    assert bits == want


def test_values_are_standard_normal() -> None:
    bits = hashed_bits(torch.arange(200_000), torch.tensor(5), torch.tensor(9))
    x = normal_from_bits(bits).double()
    assert abs(float(x.mean())) < 0.01 and abs(float(x.std()) - 1) < 0.01
    assert 3.5 < float(x.abs().max()) < 4.4  # the table's outermost quantiles: +-4.33
    tail = float((x.abs() > 2).double().mean())
    assert abs(tail - math.erfc(2 / math.sqrt(2))) < 0.003


def test_a_request_draws_the_same_values_in_any_case() -> None:
    first = {"context_len": 3, "query_len": 5, "ranges": [[1, 4]]}
    base = {"num_heads": 2, "head_dim": 16, "dtype": "float32", "seed": 11}
    alone = materialize(parse_case({"requests": [first], **base}))
    stream = request_stream(11, 0)
    moved = materialize(parse_case({"requests": [{"query_len": 7},
                                                 {**first, "seed": stream}], **base}))
    assert torch.equal(moved.q[7:], alone.q) and torch.equal(moved.k[7:], alone.k)
    again = materialize(parse_case({"requests": [first], **base}))
    assert torch.equal(again.v, alone.v)
    other = materialize(parse_case({"requests": [first], **{**base, "seed": 12}}))
    assert not torch.equal(other.q, alone.q)
