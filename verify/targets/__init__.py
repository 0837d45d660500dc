"""The registry of targets: kernels under test, by name.

Names (docs/contract.md): ``reference``, ``sdpa``, ``flex``, ``triton``, ``fa4``,
the two-call family ``two_call_<engine>`` / ``replace_<engine>`` for engines
``reference``, ``sdpa``, ``fa4``; ``fault:<name>`` for the planted faults of
:mod:`verify.targets.faults`; and any ``module:callable``.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable

from prefix_referee.verify.capabilities import Capabilities
from prefix_referee.verify.target import Target
from prefix_referee.verify.targets.external import ExternalTarget, prefix_kernel

# name -> "module:factory"; imported on first use so that a missing optional package
# (triton, flash-attn-4) only makes its own target unavailable.
_REGISTRY: dict[str, str] = {
    "reference": "prefix_referee.verify.targets.reference:ReferenceTarget",
    "sdpa": "prefix_referee.verify.targets.sdpa:SdpaTarget",
    "flex": "prefix_referee.verify.targets.flex:FlexTarget",
    "triton": "prefix_referee.verify.targets.triton:TritonTarget",
    "fa4": "prefix_referee.verify.targets.fa4:FA4Target",
    "two_call_reference": "prefix_referee.verify.targets.two_call:two_call_reference",
    "two_call_sdpa": "prefix_referee.verify.targets.two_call:two_call_sdpa",
    "two_call_fa4": "prefix_referee.verify.targets.two_call:two_call_fa4",
    "replace_reference": "prefix_referee.verify.targets.two_call:replace_reference",
    "replace_sdpa": "prefix_referee.verify.targets.two_call:replace_sdpa",
    "replace_fa4": "prefix_referee.verify.targets.two_call:replace_fa4",
}
_INSTANCES: dict[str, Target] = {}


class UnknownTargetError(KeyError):
    def __str__(self) -> str:
        return str(self.args[0])


def register(name: str, factory: str | Callable[[], Target]) -> None:
    """Add a target under ``name`` (a factory or a lazy ``"module:factory"`` string)."""
    _REGISTRY[name] = factory  # type: ignore[assignment]
    _INSTANCES.pop(name, None)


def target_names() -> list[str]:
    """Every registered name, available here or not."""
    return list(_REGISTRY)


class _MissingTarget(Target):
    """Stands in for a target whose module cannot be imported here."""

    def __init__(self, name: str, reason: str) -> None:
        super().__init__(name, "not importable here")
        self._reason = reason

    def unavailable_reason(self) -> str | None:
        return self._reason


def _build(name: str) -> Target:
    factory = _REGISTRY[name]
    if isinstance(factory, str):
        module_name, _, attr = factory.partition(":")
        try:
            factory = getattr(importlib.import_module(module_name), attr)
        except Exception as exc:  # one broken target must not take the registry down
            return _MissingTarget(name, f"{module_name} not importable: "
                                  f"{type(exc).__name__}: {exc}")
    return factory()


def get_target(name: str) -> Target:
    """The target called ``name``: registered, ``fault:<name>`` or ``module:callable``."""
    if name in _INSTANCES:
        return _INSTANCES[name]
    if name in _REGISTRY:
        target = _build(name)
    elif name.startswith("fault:"):
        from prefix_referee.verify.targets.faults import FAULTS, fault_target

        try:
            target = fault_target(name.removeprefix("fault:"))
        except KeyError as exc:
            raise UnknownTargetError(f"{exc.args[0]} (fault:<name>, or fault:<a>+<b> for "
                                     f"both bugs in one kernel; known: "
                                     + ", ".join(f"fault:{f}" for f in FAULTS) + ")") from None
    elif ":" in name:
        target = ExternalTarget(name)
    else:
        raise UnknownTargetError(
            f"unknown target {name!r}; registered: {', '.join(_REGISTRY)}; "
            "or fault:<name>, or module:callable")
    _INSTANCES[name] = target
    return target


def available_targets(device: str | None = None) -> list[str]:
    """Registered targets that can run here (on ``device``, if given)."""
    names = []
    for name in _REGISTRY:
        target = get_target(name)
        if target.unavailable_reason() is None and (
                device is None or device in target.capabilities.devices):
            names.append(name)
    return names


__all__ = ["Capabilities", "Target", "UnknownTargetError", "available_targets", "get_target",
           "prefix_kernel", "register", "target_names"]
