"""Running Triton kernels on a machine without a GPU: Triton's interpreter, with its bf16 fixed.

Triton reads ``TRITON_INTERPRET`` when a kernel is decorated (and torch imports Triton on
its own, for FlexAttention say), so the entry points (the CLI, the pytest plugin, the test
suite) call :func:`use_interpreter_without_cuda` before anything else can; importing the
suite's packages changes nothing in the environment.

The interpreter keeps bf16 as raw ``uint16`` bits (numpy has no bf16), and its ``tl.dot``
multiplies those bits as integers: every bf16 attention kernel, the suite's and anyone
else's, computes garbage on the CPU. Its fp32 -> bf16 cast truncates where the GPU rounds
to nearest even, which biases the bf16 P of ``P @ V``. Its FP8 loads are right, and so are
its conversions of finite FP8 codes, but it decodes NaN codes (e4m3fn's 0x7F, e5m2's) and
e5m2's infinities as finite numbers, so a kernel that reads a NaN-poisoned FP8 slot would
see a number. :func:`patch_interpreter_dot` fixes all three on the interpreter's builder,
for every kernel the process runs; the GPU path is not touched. Elementwise bf16
arithmetic (``x + y`` on two bf16 tensors) stays wrong there: kernels that compute in fp32
between loads and dots, as attention kernels do, are fine.
"""

from __future__ import annotations

import functools
import os
import sys
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

# Marks a builder method replaced here, with what the replacement fixes.
_PATCH_MARK = "_prefix_referee_patch"
# Triton's fp8 names -> torch's, to decode their 256 codes exactly (NaN codes included).
# fp8e4b15 has no torch twin: its dots keep the interpreter's own conversion.
_FP8_TORCH = {"fp8e4nv": "float8_e4m3fn", "fp8e5": "float8_e5m2",
              "fp8e4b8": "float8_e4m3fnuz", "fp8e5b16": "float8_e5m2fnuz"}
DOT_PATCH = ("tl.dot: bf16 and fp8 operands (and a bf16 accumulator) decoded to float32 "
             "before an fp32-accumulated product; the interpreter multiplied their bit patterns")
CAST_PATCH = ("casts to and from bf16: values round to nearest even (the interpreter "
              "truncated fp32 -> bf16) and fp64 / integer <-> bf16 convert values, not bits")
FP8_CAST_PATCH = ("casts from fp8: the 256 codes decode through torch's table (the "
                  "interpreter read NaN codes and e5m2's infinities as finite numbers)")


def use_interpreter_without_cuda() -> bool:
    """Set ``TRITON_INTERPRET=1`` on a machine without CUDA; whether the interpreter is on.

    Sets nothing where CUDA is available, or once Triton is imported (too late to matter
    for kernels already decorated). Whenever the interpreter is on, however it was turned
    on, its dots and bf16 casts are patched (:func:`patch_interpreter_dot`).
    """
    if not torch.cuda.is_available() and "triton" not in sys.modules:
        os.environ.setdefault("TRITON_INTERPRET", "1")
    if interpreter_enabled():
        patch_interpreter_dot()
    return interpreter_enabled()


def interpreter_enabled() -> bool:
    """Whether Triton kernels run under the interpreter in this process."""
    return os.environ.get("TRITON_INTERPRET") == "1"


def _fp8_table(name: str) -> np.ndarray | None:
    """float32 value of each of the 256 codes of Triton's fp8 type ``name``, if torch has it."""
    torch_dtype = getattr(torch, _FP8_TORCH.get(name, ""), None)
    if torch_dtype is None:
        return None
    return torch.arange(256, dtype=torch.uint8).view(torch_dtype).float().numpy()


def bf16_bits_to_float32(bits: np.ndarray) -> np.ndarray:
    """The float32 values of bf16 bit patterns (exact: bf16 is fp32's top half)."""
    return (np.asarray(bits).astype(np.uint32) << 16).view(np.float32)


def float_to_bf16_bits(values: np.ndarray) -> np.ndarray:
    """bf16 bit patterns of ``values`` (any real dtype), rounded to nearest even like the GPU.

    float64 goes through float32 rounded to odd, which keeps the second rounding exact.
    NaN stays a (quiet) NaN of the same sign; overflow gives inf.
    """
    with np.errstate(all="ignore"):  # overflow to inf and NaN compares are intended
        wide = np.asarray(values, dtype=np.float64)
        narrow = wide.astype(np.float32)
        toward_zero = np.where(np.abs(narrow) > np.abs(wide),
                               np.nextafter(narrow, np.float32(0)), narrow)
        odd = np.asarray(narrow != wide, dtype=np.uint32)
        bits = np.asarray(toward_zero, dtype=np.float32).view(np.uint32) | odd
        rounded = ((bits + np.uint32(0x7FFF) + ((bits >> 16) & 1)) >> 16).astype(np.uint16)
        quiet_nan = ((bits >> 16) | 0x0040).astype(np.uint16)
        return np.where(np.isnan(wide), quiet_nan, rounded)


def _decode(handle: Any) -> np.ndarray | None:
    """A bf16 or fp8 handle's values as float32; None for any other type (left as it is)."""
    scalar = handle.dtype.scalar
    if scalar.is_bf16():
        return bf16_bits_to_float32(handle.data)
    if scalar.is_fp8():
        table = _fp8_table(scalar.name)
        return None if table is None else table[np.asarray(handle.data, dtype=np.uint8)]
    return None


def _dot(original: Callable[..., Any], interp: Any) -> Callable[..., Any]:
    """``create_dot`` that decodes bf16 / fp8 operands and a bf16 accumulator first.

    Tensor cores multiply bf16 and fp8 exactly and accumulate in fp32: decode to float32
    and let numpy do an fp32 matmul. Other dots (fp16, fp32, fp64, int8) are left to the
    interpreter, which computes them right.
    """

    @functools.wraps(original)
    def create_dot(self: Any, a: Any, b: Any, d: Any, *args: Any, **kwargs: Any) -> Any:
        handles = (a, b, d)
        decoded = [_decode(h) for h in handles]
        fp8_without_table = any(h.dtype.scalar.is_fp8() and w is None
                                for h, w in zip(handles, decoded, strict=True))
        if fp8_without_table or all(w is None for w in decoded):
            return original(self, a, b, d, *args, **kwargs)
        a_f32, b_f32, d_f32 = (np.asarray(h.data if w is None else w, dtype=np.float32)
                               for h, w in zip(handles, decoded, strict=True))
        acc = np.matmul(a_f32, b_f32) + d_f32
        acc_type = d.dtype.scalar
        if acc_type.is_bf16():
            return interp.TensorHandle(float_to_bf16_bits(acc), acc_type)
        return interp.TensorHandle(acc.astype(interp._get_np_dtype(acc_type)), acc_type)

    setattr(create_dot, _PATCH_MARK, DOT_PATCH)
    return create_dot


def _cast(original: Callable[..., Any], interp: Any) -> Callable[..., Any]:
    """``cast_impl`` that converts values to and from bf16, rounding to nearest even.

    Triton sends every bf16 conversion but fp8's through ``cast_impl`` (fp32 <-> bf16 as
    fp_trunc / fp_ext, fp64 and integers directly); the others are left as they were.
    """

    @functools.wraps(original)
    def cast_impl(self: Any, src: Any, dst_type: Any) -> Any:
        src_type, dst_scalar = src.dtype.scalar, dst_type.scalar
        if src_type.is_bf16() == dst_scalar.is_bf16() or src_type.is_fp8():
            return original(self, src, dst_type)
        if dst_scalar.is_bf16():
            return interp.TensorHandle(float_to_bf16_bits(src.data), dst_scalar)
        values = bf16_bits_to_float32(src.data).astype(interp._get_np_dtype(dst_type))
        return interp.TensorHandle(values, dst_scalar)

    setattr(cast_impl, _PATCH_MARK, CAST_PATCH)
    return cast_impl


def _fp_to_fp(original: Callable[..., Any], interp: Any) -> Callable[..., Any]:
    """``create_fp_to_fp`` that decodes an fp8 source through torch's table (Triton sends
    every conversion from fp8 here); conversions of other sources are left as they were."""

    @functools.wraps(original)
    def create_fp_to_fp(self: Any, src: Any, dst_type: Any, rounding_mode: Any) -> Any:
        values = _decode(src) if src.dtype.scalar.is_fp8() else None
        dst_scalar = dst_type.scalar
        if values is None or dst_scalar.is_fp8():
            return original(self, src, dst_type, rounding_mode)
        if dst_scalar.is_bf16():
            return interp.TensorHandle(float_to_bf16_bits(values), dst_scalar)
        return interp.TensorHandle(values.astype(interp._get_np_dtype(dst_type)), dst_scalar)

    setattr(create_fp_to_fp, _PATCH_MARK, FP8_CAST_PATCH)
    return create_fp_to_fp


# Builder method -> the wrapper that fixes it.
_FIXES: dict[str, Callable[[Callable[..., Any], Any], Callable[..., Any]]] = {
    "create_dot": _dot, "cast_impl": _cast, "create_fp_to_fp": _fp_to_fp}


def patch_interpreter_dot() -> list[str]:
    """Fix bf16 / fp8 ``tl.dot``, bf16 casts and fp8 decoding in Triton's interpreter; what
    is patched now.

    Patches the interpreter's builder class, so every kernel interpreted in this process
    gets it, whenever Triton was imported. Idempotent; a no-op without Triton. The
    replaced methods keep the originals as ``__wrapped__``.
    """
    try:
        from triton.runtime import interpreter as interp
    except ImportError:
        return []
    builder = interp.InterpreterBuilder
    for name, fix in _FIXES.items():
        method = getattr(builder, name, None)  # None: a Triton without this method
        if method is not None and not hasattr(method, _PATCH_MARK):
            setattr(builder, name, fix(method, interp))
    return interpreter_patches()


def interpreter_patches() -> list[str]:
    """What :func:`patch_interpreter_dot` changed in this process's interpreter, for reports."""
    interp = sys.modules.get("triton.runtime.interpreter")
    if interp is None:
        return []
    methods = (getattr(interp.InterpreterBuilder, name, None) for name in _FIXES)
    return [getattr(m, _PATCH_MARK) for m in methods if hasattr(m, _PATCH_MARK)]
