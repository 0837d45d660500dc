"""The case stream's provider keeps Hypothesis' constants pool out of its draws by overriding
a private hook, ``HypothesisProvider._maybe_draw_constant`` (fuzz/cases/stream.py). Any
Hypothesis release may rename, remove or re-sign it; these tests then fail saying what to
check, rather than letting a seed quietly draw other cases after an import."""

from __future__ import annotations

import inspect
from typing import Any

import hypothesis
import pytest
from hypothesis import strategies as st
from hypothesis.internal.conjecture.providers import HypothesisProvider

from prefix_referee.fuzz.cases import stream

WHAT_TO_CHECK = (
    f"Hypothesis {hypothesis.__version__} changed HypothesisProvider._maybe_draw_constant, "
    "which fuzz.cases.stream._SeededOnly overrides so that literals of loaded modules stay "
    "out of the case stream. Check how hypothesis/internal/conjecture/providers.py now "
    "mixes constants into draw_integer/draw_float/draw_string/draw_bytes, override that "
    "in _SeededOnly instead, and update the hypothesis range in pyproject.toml (its "
    "comment names the versions tested)."
)
P = inspect.Parameter
EXPECTED = [("self", P.POSITIONAL_OR_KEYWORD), ("choice_type", P.POSITIONAL_OR_KEYWORD),
            ("constraints", P.POSITIONAL_OR_KEYWORD), ("p", P.KEYWORD_ONLY)]


def test_hypothesis_still_has_the_constants_hook_with_its_signature() -> None:
    hook = getattr(HypothesisProvider, "_maybe_draw_constant", None)
    assert callable(hook), WHAT_TO_CHECK
    parameters = inspect.signature(hook).parameters.values()
    assert [(p.name, p.kind) for p in parameters] == EXPECTED, WHAT_TO_CHECK
    assert issubclass(stream._SeededOnly, HypothesisProvider), WHAT_TO_CHECK
    assert "_maybe_draw_constant" in vars(stream._SeededOnly), WHAT_TO_CHECK


def test_the_stream_draws_go_through_the_overridden_hook(monkeypatch: pytest.MonkeyPatch
                                                         ) -> None:
    """An override Hypothesis no longer calls would leave the constants pool on."""
    calls: list[str] = []

    def counting(self: HypothesisProvider, choice_type: str, *args: Any, **kwargs: Any
                 ) -> None:
        calls.append(choice_type)

    monkeypatch.setattr(stream._SeededOnly, "_maybe_draw_constant", counting)
    drawn = stream.draw_examples(st.integers(0, 10**6), 20, stream_seed=3)
    assert len(drawn) == 20
    assert "integer" in calls, WHAT_TO_CHECK
