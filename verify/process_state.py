"""Process-wide state a kernel can change: captured before its call, restored after it.

A kernel runs inside the referee's process (a worker, or the main process with
``--isolation none`` and under the pytest plugin). Whatever process-wide setting it
changes would change every later verdict in that process: the default dtype or device,
the intra-op thread count, grad mode, the ``torch.backends`` flags (TF32, reduced
precision reductions, the SDPA backends, cuDNN, deterministic algorithms), the working
directory, Triton's knobs, the environment, the random number generators. :func:`capture`
reads them all (tens of microseconds); :meth:`ProcessState.restore` puts back what
changed and names the changes a kernel has no business making. Two kinds are restored
without a word: the environment (torch and Triton set variables of their own the first
time they compile, ``TORCHINDUCTOR_CACHE_DIR`` for one) and the random number generators
(torch's on the CPU and on the GPU in use, Python's ``random``: drawing random numbers is
no fault, and the referee draws none of its own).
"""

from __future__ import annotations

import os
import random
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch


class _Unreadable:
    """A flag whose getter raised (torch refuses to read a TF32 flag once the legacy and
    the new API were mixed)."""

    def __repr__(self) -> str:
        return "unreadable"


UNREADABLE = _Unreadable()


@dataclass(frozen=True)
class _Setting:
    name: str
    get: Callable[[], Any]
    set: Callable[[Any], None]


def _attribute(owner: Any, path: str, attribute: str) -> _Setting:
    return _Setting(f"{path}.{attribute}", lambda: getattr(owner, attribute),
                    lambda value: setattr(owner, attribute, value))


def _call(getter: str, setter: str) -> _Setting:
    get, put = getattr(torch.backends.cuda, getter), getattr(torch.backends.cuda, setter)
    return _Setting(f"torch.backends.cuda.{getter}()", get, put)


def _set_default_device(device: torch.device) -> None:
    # An explicit "cpu" would install a device mode that every torch call then pays for.
    torch.set_default_device(None if device == torch.device("cpu") else device)


def _set_deterministic(value: tuple[bool, bool]) -> None:
    torch.use_deterministic_algorithms(value[0], warn_only=value[1])


def _settings() -> list[_Setting]:
    """Every setting checked, legacy TF32 flags before the newer ``fp32_precision`` ones (a
    restore sets them in this order and the newer API has the last word)."""
    b = torch.backends
    found = [
        _Setting("torch.get_default_dtype()", torch.get_default_dtype, torch.set_default_dtype),
        _Setting("torch.get_default_device()", torch.get_default_device, _set_default_device),
        _Setting("torch.get_num_threads()", torch.get_num_threads, torch.set_num_threads),
        _Setting("torch.is_grad_enabled()", torch.is_grad_enabled, torch.set_grad_enabled),
        _Setting("torch.are_deterministic_algorithms_enabled()",
                 lambda: (torch.are_deterministic_algorithms_enabled(),
                          torch.is_deterministic_algorithms_warn_only_enabled()),
                 _set_deterministic),
        _Setting("torch.get_float32_matmul_precision()", torch.get_float32_matmul_precision,
                 torch.set_float32_matmul_precision),
        _attribute(b.cuda.matmul, "torch.backends.cuda.matmul", "allow_tf32"),
        _attribute(b.cuda.matmul, "torch.backends.cuda.matmul",
                   "allow_fp16_reduced_precision_reduction"),
        _attribute(b.cuda.matmul, "torch.backends.cuda.matmul",
                   "allow_bf16_reduced_precision_reduction"),
        _attribute(b.cudnn, "torch.backends.cudnn", "enabled"),
        _attribute(b.cudnn, "torch.backends.cudnn", "benchmark"),
        _attribute(b.cudnn, "torch.backends.cudnn", "deterministic"),
        _attribute(b.cudnn, "torch.backends.cudnn", "allow_tf32"),
        _attribute(b.mkldnn, "torch.backends.mkldnn", "enabled"),
        _call("flash_sdp_enabled", "enable_flash_sdp"),
        _call("mem_efficient_sdp_enabled", "enable_mem_efficient_sdp"),
        _call("math_sdp_enabled", "enable_math_sdp"),
    ]
    if hasattr(b.cuda, "cudnn_sdp_enabled"):
        found.append(_call("cudnn_sdp_enabled", "enable_cudnn_sdp"))
    for owner, path in ((b, "torch.backends"), (b.cuda.matmul, "torch.backends.cuda.matmul"),
                        (b.cudnn, "torch.backends.cudnn"), (b.mkldnn, "torch.backends.mkldnn")):
        if hasattr(owner, "fp32_precision"):
            found.append(_attribute(owner, path, "fp32_precision"))
    return found


_SETTINGS: list[_Setting] | None = None


def _read(setting: _Setting) -> Any:
    try:
        return setting.get()
    except Exception:
        return UNREADABLE


def _triton_knobs() -> dict[str, dict[str, Any]] | None:
    """Triton's knob groups (``triton.knobs.runtime``, ...) as set in Python, if Triton is
    already imported and has knobs (3.4 on); what a knob reads from the environment is
    covered by the environment."""
    knobs = sys.modules.get("triton.knobs")
    base = getattr(knobs, "base_knobs", None)
    if base is None:
        return None
    return {name: dict(group.__dict__) for name, group in vars(knobs).items()
            if isinstance(group, base)}


@dataclass
class ProcessState:
    """What :func:`capture` read; :meth:`restore` puts it back."""

    settings: dict[str, Any]
    environ: dict[Any, Any]  # os.environ's own encoded mapping where it has one (fast to copy)
    cwd: str | None
    triton: dict[str, dict[str, Any]] | None
    cpu_rng: torch.Tensor
    cuda_rng: torch.Tensor | None  # the current device's
    python_rng: object

    def changes(self, now: ProcessState | None = None, *, environment: bool = True
                ) -> list[str]:
        """What differs between this state and ``now`` (default: the process as it is), in
        words: ``torch.get_default_dtype() torch.float32 -> torch.float64``, ``the
        working directory / -> /tmp``, ``triton.knobs.runtime``, and unless
        ``environment`` is false ``the environment variable X set``."""
        now = now or capture()
        found = [f"{name} {_text(value)} -> {_text(now.settings[name])}"
                 for name, value in self.settings.items()
                 if not _same(value, now.settings[name])]
        for key in sorted(self.environ.keys() | now.environ.keys()) if environment else ():
            if self.environ.get(key) != now.environ.get(key):
                what = ("set" if key not in self.environ else "removed" if key not in now.environ
                        else "changed")
                found.append(f"the environment variable {_decode(key)} {what}")
        if self.cwd != now.cwd:
            found.append(f"the working directory {self.cwd} -> {now.cwd}")
        if self.triton is not None and now.triton is not None:
            found += [f"triton.knobs.{name}" for name, group in self.triton.items()
                      if now.triton.get(name) != group]
        return found

    def restore(self) -> list[str]:
        """Put back everything that changed since this state was captured; what changed,
        in words, but for the environment and the random number generators. Raises
        :class:`RestoreError` if something could not be put back."""
        now = capture()
        changed = self.changes(now, environment=False)
        if not changed and self.environ == now.environ:
            self._restore_generators(now)
            return []
        for setting in _settings_list():
            value = self.settings[setting.name]
            if value is not UNREADABLE and not _same(value, now.settings[setting.name]):
                try:
                    setting.set(value)
                except Exception as exc:
                    raise RestoreError(f"{setting.name}: {type(exc).__name__}: {exc}") from None
        if self.environ != now.environ:
            for key in now.environ.keys() - self.environ.keys():
                del os.environ[_decode(key)]
            for key, value in self.environ.items():
                if now.environ.get(key) != value:
                    os.environ[_decode(key)] = _decode(value)
        if self.cwd is not None and self.cwd != now.cwd:
            try:
                os.chdir(self.cwd)
            except OSError as exc:
                raise RestoreError(f"the working directory {self.cwd}: {exc.strerror}") from None
        if self.triton is not None:
            knobs = sys.modules["triton.knobs"]
            for name, saved in self.triton.items():
                group = getattr(knobs, name)
                if group.__dict__ != saved:
                    group.__dict__.clear()
                    group.__dict__.update(saved)
        self._restore_generators(now)
        left = self.changes()
        if left:
            raise RestoreError(f"{left[0]} after restoring it")
        return changed

    def _restore_generators(self, now: ProcessState) -> None:
        if not torch.equal(self.cpu_rng, now.cpu_rng):
            torch.set_rng_state(self.cpu_rng)
        if self.cuda_rng is not None:
            torch.cuda.set_rng_state(self.cuda_rng)
        random.setstate(self.python_rng)  # type: ignore[arg-type]


class RestoreError(Exception):
    """Process-wide state a kernel changed could not be put back: the process must go."""


def _settings_list() -> list[_Setting]:
    global _SETTINGS
    if _SETTINGS is None:
        _SETTINGS = _settings()
    return _SETTINGS


def _environ() -> dict[Any, Any]:
    """A copy of the environment: os.environ's encoded mapping (a plain copy, about 20 times
    faster than decoding every entry), or the decoded one where it has none."""
    data = getattr(os.environ, "_data", None)
    return dict(data) if isinstance(data, dict) else dict(os.environ)


def _decode(item: Any) -> str:
    return os.fsdecode(item) if isinstance(item, bytes) else item


def _same(a: Any, b: Any) -> bool:
    return a is b or (a is not UNREADABLE and b is not UNREADABLE and a == b)


def _text(value: Any) -> str:
    return repr(value) if isinstance(value, str) else str(value)


def capture() -> ProcessState:
    """The process-wide state now."""
    try:
        cwd: str | None = os.getcwd()
    except OSError:  # the working directory was removed
        cwd = None
    cuda = torch.cuda.get_rng_state() if torch.cuda.is_initialized() else None
    return ProcessState({s.name: _read(s) for s in _settings_list()}, _environ(), cwd,
                        _triton_knobs(), torch.get_rng_state(), cuda, random.getstate())
