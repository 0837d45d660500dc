"""The pytest plugin, in-process: ``--prefix-target`` collects the packaged tests, which pass a
correct kernel and fail one that ignores the image ranges, naming where; nothing changes
without it. (tests/test_wheel.py runs it from an installed wheel, with xdist and JUnit.)
Then the helper engines' own tests call, ``fuzz.testing.assert_matches_reference``."""

from __future__ import annotations

import json
from importlib.metadata import entry_points

import pytest
from torch import Tensor

from prefix_referee.fuzz.cases.strategies import ADVERSARIAL_CASES
from prefix_referee.fuzz.golden.replay import golden_files
from prefix_referee.fuzz.plugin.hooks import SUITE_FILES
from prefix_referee.fuzz.testing import Capabilities, assert_matches_reference, prefix_kernel
from prefix_referee.verify.case import parse_case
from prefix_referee.verify.mask import causal_only
from prefix_referee.verify.materialize import MaterializedCase, materialize
from prefix_referee.verify.runner import Status
from prefix_referee.verify.targets import get_target

pytest_plugins = ["pytester"]

# The plugin loads through its entry point once the package is installed from this
# checkout; an older install of the package lacks it, so it is named explicitly then (not
# both: pytest refuses to register one module under two names).
HOOKS = "prefix_referee.fuzz.plugin.hooks"
PLUGIN = [] if any(ep.value == HOOKS for ep in entry_points(group="pytest11")) else ["-p", HOOKS]
# Few random cases: the adversarial layouts run as well, and the golden replay is cheap.
FAST = ["-p", "no:cacheprovider", "--prefix-profile", "ci", "--prefix-examples", "3",
        "--prefix-min-cases", "1"]
# The kernels below, as module:callable targets of the in-process runs.
HERE = __name__

CALLS: list[str] = []


def reference_kernel(case: MaterializedCase) -> tuple[Tensor, Tensor | None]:
    """Exact attention (the suite's reference, as a user's kernel); counts its calls."""
    CALLS.append(case.spec.to_json())
    return get_target("reference").run(case)


@prefix_kernel(Capabilities(softcap=False))
def causal_kernel(case: MaterializedCase) -> tuple[Tensor, Tensor | None]:
    """Exact attention with every image range dropped: plain causal attention."""
    return get_target("reference").run(materialize(causal_only(case.spec), case.device))


@prefix_kernel(approximation="two_call")
def two_call_kernel(case: MaterializedCase) -> tuple[Tensor, Tensor | None]:
    """The two-call merge: approximate by design, and declared so."""
    return get_target("two_call_reference").run(case)


def two_call_claiming_exact(case: MaterializedCase) -> tuple[Tensor, Tensor | None]:
    """The same merge, undeclared: it claims exact attention."""
    return two_call_kernel(case)


def _run(pytester: pytest.Pytester, *args: str) -> pytest.RunResult:
    return pytester.runpytest(*PLUGIN, *args)


def test_without_prefix_target_nothing_more_is_collected(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_own="def test_own():\n    pass\n")
    result = _run(pytester, "--collect-only", "-q")
    assert result.ret == pytest.ExitCode.OK
    assert [line for line in result.outlines if "::" in line] == ["test_own.py::test_own"]
    assert "prefix-referee" not in result.stdout.str()


def test_sdpa_passes_the_packaged_tests(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_own="def test_own():\n    pass\n")
    result = _run(pytester, *FAST, "--prefix-target", "sdpa", "-k",
                  "test_own or test_matches_reference or edge-one_token_ranges or fault-lse")
    result.assert_outcomes(passed=4)


def test_a_causal_only_kernel_fails_naming_the_request_and_position(
        pytester: pytest.Pytester) -> None:
    result = _run(pytester, *FAST, "--prefix-target", f"{HERE}:causal_kernel", "-k",
                  "test_matches_reference or fault-merged_image_groups")
    result.assert_outcomes(failed=2)
    result.stdout.fnmatch_lines([
        "*FAIL: max err*",
        "*worst: request 0, query * (position *), head *, inside range*",
        "*case: {*",
    ])


def test_targets_are_deduplicated_and_the_suite_file_collected_once(
        pytester: pytest.Pytester) -> None:
    result = _run(pytester, "--collect-only", "-q", "--prefix-target", "sdpa",
                  "--prefix-target", "sdpa", *map(str, SUITE_FILES))
    ids = [line for line in result.outlines if "::" in line]
    assert len(ids) == len(set(ids)) == 1 + len(golden_files())
    # The ids a checkout gives the file, wherever the package is installed.
    assert ids[0] == "fuzz/plugin/suite/test_target.py::test_matches_reference[sdpa]"


def test_the_packaged_tests_import_by_their_package_name(pytester: pytest.Pytester) -> None:
    """From a checkout too: not under the folder's old name, whose DeprecationWarning an
    engine that turns warnings into errors would see as a collection error."""
    result = pytester.runpytest_subprocess(*PLUGIN, "-p", "no:cacheprovider", "-W",
                                           "error:'fuzz:DeprecationWarning", "--collect-only",
                                           "-q", "--prefix-target", "sdpa")
    assert result.ret == pytest.ExitCode.OK, result.stdout.str()


@pytest.mark.parametrize(("options", "ci", "profile", "examples"), [
    ((), None, "dev", 40),
    ((), "1", "ci", 25),
    (("--prefix-profile", "nightly"), "1", "nightly", 2000),
    (("--prefix-profile", "gpu", "--prefix-examples", "7"), None, "gpu", 7),
], ids=["default", "default under CI", "nightly", "gpu with a budget"])
def test_prefix_profile_picks_the_hypothesis_profile(
        pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, options: tuple[str, ...],
        ci: str | None, profile: str, examples: int) -> None:
    if ci is None:
        monkeypatch.delenv("CI", raising=False)
    else:
        monkeypatch.setenv("CI", ci)
    result = _run(pytester, "--collect-only", "--prefix-target", "sdpa", *options)
    result.stdout.fnmatch_lines([f"prefix-referee: targets sdpa; hypothesis profile {profile}, "
                                 f"{examples} random cases per target"])


def test_the_profile_sets_the_budget_of_the_property_test(pytester: pytest.Pytester) -> None:
    """Every adversarial layout, then random cases up to the budget asked for."""
    CALLS.clear()
    result = _run(pytester, *FAST, "--prefix-target", f"{HERE}:reference_kernel", "-k",
                  "test_matches_reference")
    result.assert_outcomes(passed=1)
    adversarial = {spec.to_json() for spec in ADVERSARIAL_CASES.values()}
    assert len(adversarial) < len(CALLS) <= len(adversarial) + 3
    assert adversarial <= set(CALLS)


@pytest.mark.parametrize(("options", "message"), [
    (("--prefix-target", "nope"), "--prefix-target: unknown target 'nope'; registered: *"),
    (("--prefix-target", "fault:nope"), "--prefix-target: unknown fault 'nope'*"),
    (("--prefix-target", "no_such:kernel"), "--prefix-target no_such:kernel cannot run here: "
                                            "cannot load no_such:kernel: ModuleNotFoundError*"),
    (("--prefix-target", "fa4"), "--prefix-target fa4 cannot run here: *"),
    (("--prefix-target", "sdpa", "--prefix-examples", "0"),
     "--prefix-examples: must be at least 1, got 0"),
    (("--prefix-target", "sdpa", "--prefix-expect", "no/such.json"),
     "--prefix-expect: no/such.json: cannot read expected findings: *"),
], ids=["unknown target", "unknown fault", "unloadable module", "no device for it",
        "no examples", "unreadable expectations"])
def test_bad_options_are_one_line_usage_errors(pytester: pytest.Pytester,
                                               options: tuple[str, ...], message: str) -> None:
    result = _run(pytester, *options)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([f"ERROR: {message}"])
    assert len([line for line in result.errlines if line.strip()]) == 1


@prefix_kernel(Capabilities(dtypes=frozenset({"float32"}), head_dims=frozenset({64}),
                            max_total_tokens=4))
def narrow_kernel(case: MaterializedCase) -> tuple[Tensor, Tensor | None]:
    """A correct kernel that declines nearly every case."""
    return get_target("reference").run(case)


def test_a_target_that_judges_too_few_cases_fails(pytester: pytest.Pytester) -> None:
    result = _run(pytester, "-p", "no:cacheprovider", "--prefix-examples", "5",
                  "--prefix-target", f"{HERE}:narrow_kernel", "-k", "test_matches_reference")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*judged only * random cases, fewer than --prefix-min-cases 10*"])


CAUSAL_FINDING = {"identity": {"symptom": "values", "cause": "trigger", "features": ["image"]},
                  "case": {"requests": [{"query_len": 12, "ranges": [[2, 7]]}], "num_heads": 2,
                           "head_dim": 16, "dtype": "float32"}}


def _expect(pytester: pytest.Pytester, target: str) -> str:
    path = pytester.path / "known.json"
    path.write_text(json.dumps({"target": target, "findings": [CAUSAL_FINDING]}))
    return str(path)


def test_expected_findings_pass_while_they_reproduce(pytester: pytest.Pytester) -> None:
    """The causal-only kernel's one bug (it ignores the images) is accepted; the gate is
    green, and a fixed kernel's entry is stale."""
    causal = f"{HERE}:causal_kernel"
    result = _run(pytester, *FAST, "--prefix-target", causal, "--prefix-expect",
                  _expect(pytester, causal), "-k", "test_matches_reference or expected")
    result.assert_outcomes(passed=2)
    fixed = f"{HERE}:reference_kernel"
    result = _run(pytester, *FAST, "--prefix-target", fixed, "--prefix-expect",
                  _expect(pytester, fixed), "-k", "expected")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*stale: values: image in *known.json no longer reproduces: "
                                 "fixed? remove it from the file*"])


def lse_doubled_kernel(case: MaterializedCase) -> tuple[Tensor, Tensor | None]:
    """Exact attention with its LSE doubled: a bug everywhere, unlike the causal one."""
    out, lse = get_target("reference").run(case)
    return out, lse * 2


def test_an_unexpected_finding_fails_naming_it(pytester: pytest.Pytester) -> None:
    kernel = f"{HERE}:lse_doubled_kernel"
    result = _run(pytester, *FAST, "--prefix-target", kernel, "--prefix-expect",
                  _expect(pytester, kernel), "-k", "test_matches_reference")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*finding: lse: everywhere: * (not expected)*"])


# prefix_referee.fuzz.testing.assert_matches_reference: what an engine's own tests call.


def test_fuzz_testing_keeps_the_old_names_of_the_spaces() -> None:
    from prefix_referee.fuzz import testing

    assert testing.PROFILES is testing.SPACES
    assert testing.default_profile is testing.default_space
    assert {"SPACES", "default_space"} <= set(testing.__all__)
    assert not {"PROFILES", "default_profile"} & set(testing.__all__)

SMALL_CASE = {"requests": [{"query_len": 16, "ranges": [[2, 5], [9, 14]]}], "num_heads": 2,
              "num_kv_heads": 1, "head_dim": 32, "dtype": "bfloat16", "page_size": None,
              "seed": 0}


@pytest.mark.parametrize("target", ["sdpa", get_target("flex"), reference_kernel],
                         ids=["name", "Target", "callable"])
@pytest.mark.parametrize("case", [SMALL_CASE, parse_case(SMALL_CASE),
                                  materialize(parse_case(SMALL_CASE))],
                         ids=["mapping", "CaseSpec", "MaterializedCase"])
def test_assert_matches_reference_takes_any_target_and_case(target: object, case: object
                                                            ) -> None:
    assert assert_matches_reference(target, case).status == Status.PASS


def test_assert_matches_reference_raises_with_the_diagnosis() -> None:
    with pytest.raises(AssertionError, match=r"(?s)FAIL: .*worst: request 0, query \d+ "
                       r"\(position \d+\), head \d+, inside range .*case: \{"):
        assert_matches_reference(causal_kernel, SMALL_CASE)


def test_a_case_the_target_declines_fails_unless_skips_are_allowed() -> None:
    softcapped = {**SMALL_CASE, "softcap": 30.0}
    with pytest.raises(AssertionError, match="SKIP: unsupported: softcap"):
        assert_matches_reference(causal_kernel, softcapped)
    outcome = assert_matches_reference(causal_kernel, softcapped, allow_skip=True)
    assert outcome.status == Status.SKIP and outcome.reason == "unsupported: softcap"


def test_a_kernel_function_is_judged_by_what_it_declares() -> None:
    """What prefix_kernel declares counts: the two-call merge passes against its declared
    approximation and fails when it claims exact attention; any callable works, a closure too."""
    assert assert_matches_reference(two_call_kernel, SMALL_CASE).status == Status.PASS
    with pytest.raises(AssertionError, match="FAIL"):
        assert_matches_reference(two_call_claiming_exact, SMALL_CASE)
    with pytest.raises(AssertionError, match="FAIL"):
        assert_matches_reference(lambda case: two_call_kernel(case), SMALL_CASE)
