"""Compile-aware case streams: few configurations, many layouts each, packs that share
their options; model presets draw every layer kind."""

from __future__ import annotations

import json
from collections import Counter

from prefix_referee.fuzz.cases.coverage import FEATURES, features
from prefix_referee.fuzz.cases.models import MODELS
from prefix_referee.fuzz.cases.spaces import space_for
from prefix_referee.fuzz.cases.strategies import CPU_SPACE, GPU_SPACE
from prefix_referee.fuzz.cases.stream import MIN_QUOTA, CaseStream
from prefix_referee.fuzz.cli import main as fuzz
from prefix_referee.verify.capabilities import Capabilities
from prefix_referee.verify.pack import pack_key

CONFIG = ("dtype", "num_heads", "num_kv_heads", "head_dim", "value_dim", "page_size",
          "softcap")


def _config(spec) -> tuple:
    return tuple(getattr(spec, name) for name in CONFIG)


def _stream(spaces, declines=lambda spec: None, seed: int = 0) -> CaseStream:
    return CaseStream(spaces, declines, seed, pack_cases=8, pack_tokens=1024)


def test_configurations_serve_many_cases_and_packs_share_their_options() -> None:
    stream = _stream([CPU_SPACE])
    configs: Counter[tuple] = Counter()
    for _ in range(40):
        pack = stream.next_pack()
        assert len({pack_key(spec) for spec in pack}) == 1
        assert sum(spec.total_k for spec in pack) <= 1024 or len(pack) == 1
        configs.update(_config(spec) for spec in pack)
    cases = sum(configs.values())
    assert len(configs) <= cases / MIN_QUOTA + 3  # the pool: a few configurations at a time


def test_a_slow_compile_grows_the_quota() -> None:
    stream = _stream([CPU_SPACE])
    stream.next_pack()
    stream.compiled(seconds=8.0, seconds_per_case=0.01)
    assert stream.quota > 1000


def test_the_same_seed_draws_the_same_stream() -> None:
    one, two = _stream([CPU_SPACE], seed=5), _stream([CPU_SPACE], seed=5)
    assert [s.to_json() for _ in range(5) for s in one.next_pack()] == [
        s.to_json() for _ in range(5) for s in two.next_pack()]


def test_declined_draws_are_counted() -> None:
    stream = _stream([CPU_SPACE], declines=lambda spec: "too many requests"
                     if len(spec.requests) > 1 else None)
    for _ in range(10):
        assert all(len(spec.requests) == 1 for spec in stream.next_pack())
    assert stream.declined["too many requests"] > 0


def test_gemma4_draws_both_layer_kinds() -> None:
    spaces = [space_for(Capabilities(), s) for s in MODELS["gemma4-31b"].spaces(GPU_SPACE)]
    stream = _stream(spaces)
    kinds = set()
    for _ in range(12):
        for spec in stream.next_pack():
            kinds.add((spec.head_dim, spec.sliding_window, spec.clamp_ranges_to_window,
                       spec.num_heads, spec.num_kv_heads, spec.softmax_scale))
    assert (256, 1024, True, 32, 16, 1.0) in kinds and (512, None, False, 32, 4, 1.0) in kinds


def test_the_cpu_space_covers_the_layout_features() -> None:
    seen: Counter[str] = Counter()
    for seed in range(3):  # a few configurations each: three streams cover more of them
        stream = _stream([CPU_SPACE], seed=seed)
        for _ in range(50):
            for spec in stream.next_pack():
                seen.update(features(spec))
    missing = set(FEATURES) - set(seen) - {"overlapping_ranges"}
    assert not missing, missing


def test_a_compiling_kernel_spends_a_small_share_of_its_time_compiling(tmp_path) -> None:
    assert fuzz(["--target", "tests.compiling:kernel", "--budget", "8", "--seed", "2",
                 "--device", "cpu", "--no-plots", "--report-dir", str(tmp_path)]) == 0
    report = json.loads((tmp_path / "latest" / "report.json").read_text())["targets"][0]
    seconds = report["seconds"]
    assert report["compiles"] >= 3  # the pool's first configurations
    assert report["judged"] >= 10 * report["compiles"]
    assert seconds["compile"] <= 0.4 * seconds["explore"], seconds
