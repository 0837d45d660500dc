"""Triage names each planted bug's cause, and attribution keeps one cause one finding.

Each single-cause fault's golden case is triaged in-process: its identity must be the
fault's cause and the words must say it. A kernel with two bugs, one needing more than
the other (an image, versus an image and cached context), must give two findings.
"""

from __future__ import annotations

import pytest

from prefix_referee.fuzz.golden.cases import FAULT_CASES
from prefix_referee.fuzz.loop.attribution import attribute, made_visible
from prefix_referee.fuzz.loop.triage import Diagnosis, run_sync, triage
from prefix_referee.fuzz.records.findings import Cause, Finding, Identity
from prefix_referee.verify import materialize, parse_case
from prefix_referee.verify.compare import Location, Verdict
from prefix_referee.verify.runner import Outcome, Status, evaluate
from prefix_referee.verify.targets import get_target
from prefix_referee.verify.targets.faults import SINGLE_CAUSE

CAUSES = {
    "last_range_end_exclusive": ("values: image", "an image range"),
    "context_positions_restart": ("values: image + cached_context", "cached context"),
    "window_inclusive_under_clamp": ("values: window + clamp", "clamping the image ranges"),
    "gqa_ratio_4": ("values: gqa", "GQA ratio 4 (passes at 1 and 2)"),
    "lse_base2": ("lse: everywhere", "log base 2"),
    "low_precision_accumulator": ("out: precision", "follows the dtype's precision"),
    "position_off_by_one_from_100": ("values: threshold", "from position 100 on"),
    "page_size_assumed_16": ("values: paging", "page size 7"),
    "softcap_without_division": ("values: softcap", "softcap 5"),
}
GOLDEN = {g.built_for: g.spec for g in FAULT_CASES}


def _runner(name: str):
    target = get_target(name)

    def run(spec) -> Outcome:
        return evaluate(target, materialize(spec))

    return target, run, lambda spec: target.unsupported_reason(spec, "cpu") is None


def test_every_single_cause_fault_has_a_named_cause() -> None:
    assert set(CAUSES) == set(SINGLE_CAUSE)


@pytest.mark.parametrize("fault", SINGLE_CAUSE)
def test_triage_names_the_cause_of_each_planted_bug(fault: str) -> None:
    _, run, accepts = _runner(f"fault:{fault}")
    spec = GOLDEN[fault]
    outcome = run(spec)
    assert outcome.failed
    diagnosis = run_sync(triage(spec, outcome, accepts, describe=True), run)
    identity, words = CAUSES[fault]
    assert str(diagnosis.identity) == identity, diagnosis.words
    assert words in diagnosis.words
    assert diagnosis.runs > 0


def test_an_untriaged_symptom_costs_no_run() -> None:
    outcome = Outcome("x", "error", kind="timeout")  # type: ignore[arg-type]
    spec = GOLDEN["gqa_ratio_4"]
    diagnosis = run_sync(triage(spec, outcome, lambda s: True), None)
    assert diagnosis.identity == Identity("timeout", Cause.UNTRIAGED) and diagnosis.runs == 0


def _attribute_all(name: str, specs: list) -> list[Finding]:
    _, run, accepts = _runner(name)
    findings: list[Finding] = []
    for spec in specs:
        outcome = run(spec)
        assert outcome.failed, spec
        found = run_sync(attribute(spec, outcome, findings, accepts), run)
        if found.finding is not None:
            found.finding.sightings += 1
        else:
            findings.append(Finding(found.diagnosis.identity, found.diagnosis.words, found.spec,
                                    found.outcome, found.diagnosis.position))
    return findings


def _case(requests: list[dict], **fields) -> object:
    return parse_case({"requests": requests, "num_heads": 4, "num_kv_heads": 2, "head_dim": 64,
                       "dtype": "bfloat16", **fields})


def test_a_bug_whose_trigger_contains_a_known_ones_is_a_finding_of_its_own() -> None:
    """Every failure of the context bug also needs an image, so taking the range bug's
    trigger (the images) away clears it too: it must still be told apart. (Its cases have
    one-token images, which the range bug leaves alone.)"""
    image_only = [_case([{"query_len": 16, "ranges": [[2, 5], [8, 12]]}], seed=s)
                  for s in range(4)]
    with_context = [_case([{"context_len": 8, "query_len": 8, "ranges": [[3, 3]]}], seed=s)
                    for s in range(3)]
    findings = _attribute_all("fault:last_range_end_exclusive+context_positions_restart",
                              [*image_only, *with_context])
    assert {str(f.identity) for f in findings} == {"values: image",
                                                  "values: image + cached_context"}


def test_sightings_of_one_bug_are_one_finding() -> None:
    specs = [_case([{"query_len": n, "ranges": [[1, n // 2]]}], num_heads=8, seed=s)
             for s, n in enumerate((12, 20, 33, 47, 9, 26))]
    findings = _attribute_all("fault:gqa_ratio_4", specs)
    assert [(str(f.identity), f.sightings) for f in findings] == [("values: gqa", 6)]


def test_a_window_that_only_hides_the_causal_path_adds_no_finding() -> None:
    """The decode's key 0 is in its image range and, without the window, visible causally
    too: the range bug shows only under the window, and is still the range bug."""
    image = _case([{"query_len": 2, "ranges": [[0, 1]]}], dtype="float32", num_kv_heads=4)
    windowed = _case([{"context_len": 1, "query_len": 1, "ranges": [[0, 1]]}],
                     dtype="float32", num_kv_heads=4, sliding_window=1)
    findings = _attribute_all("fault:last_range_end_exclusive", [image, windowed])
    assert [(str(f.identity), f.sightings) for f in findings] == [("values: image", 2)]



def test_a_trigger_found_past_a_known_threshold_is_that_threshold_bug() -> None:
    """Past position 100 each query misses its own key; on near-tied bfloat16 values that
    error can stay within tolerance unless an image range reshapes the weights, and triage
    then names the range. A failure whose worst element lies past the threshold is still
    the threshold bug; one before it is not."""
    spec = _case([{"query_len": 120, "ranges": [[0, 2]]}])
    image = Diagnosis(Identity("values", Cause.TRIGGER, ("image",)), "fails only with an image",
                      runs=3)
    threshold = Finding(Identity("values", Cause.THRESHOLD), "from position 100 on", spec,
                        Outcome("x", Status.FAIL), position=100)

    def failing_at(position: int) -> Outcome:
        worst = Location(0, position, position, 0, "text", "", 1.0, 0.0, column=0)
        return Outcome("x", Status.FAIL, Verdict(False, worst=worst, kind="out"))

    assert made_visible(image, failing_at(110), [threshold]) is threshold
    assert made_visible(image, failing_at(40), [threshold]) is None
