"""How big the two-call overlap error is, and where.

``python -m prefix_referee.verify.two_call_analysis`` (``python -m verify.two_call_analysis``
in a checkout).

Runs the default sweeps of :mod:`verify.two_call_analysis.sweeps` (CPU, float64, deterministic),
prints one table per sweep and the worst case in bf16 ULPs at the output's scale,
writes one PNG per sweep (matplotlib Agg) to ``--out`` and the JSON summary to
``--summary`` (by default under ``reports/two_call/`` in the current directory; the
repository keeps one in golden/two_call/summary.json, which a test re-derives).
"""

from __future__ import annotations

import argparse
import json
import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table

from prefix_referee.verify.plotting import PlotsUnavailable, pyplot
from prefix_referee.verify.two_call_analysis.error import TV_BOUND
from prefix_referee.verify.two_call_analysis.sweeps import SWEEPS, PointResult, run_sweeps, summary

DEFAULT_OUT = Path("reports") / "two_call"
DEFAULT_SUMMARY = DEFAULT_OUT / "summary.json"
# Sweeps whose values span decades get a logarithmic x axis (symlog: offset 0 occurs).
LOG_X = {"length", "temperature", "offset"}


@contextmanager
def one_torch_thread() -> Iterator[None]:
    """The sweeps are many small float64 ops, where torch's thread pool costs more than it
    gains (measured on the 2-core CI machine: 1.2 s of CPU on one thread, 8 s on two)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def compact_json(data: object) -> str:
    """Indented JSON with every flat object on one line: one sweep point per line."""
    text = json.dumps(data, indent=1)
    return re.sub(r"\{[^{}\[\]]*\}", lambda m: json.dumps(json.loads(m.group())), text) + "\n"


def sweep_table(name: str, rows: list[PointResult]) -> Table:
    table = Table(title=f"{name}: {SWEEPS[name]}", title_justify="left")
    for column in ("x", "max m", "mean m", "max TV", "mean TV", "max |err|", "mean |err|",
                   "max rel L2", "bf16 ulps"):
        table.add_column(column, justify="right")
    for r in rows:
        table.add_row(f"{r.x:g}", f"{r.max_mass:.4f}", f"{r.mean_mass:.4f}", f"{r.max_tv:.4f}",
                      f"{r.mean_tv:.4f}", f"{r.max_abs_error:.4f}", f"{r.mean_abs_error:.4f}",
                      f"{r.max_rel_l2:.3f}", f"{r.bf16_ulps:.1f}")
    return table


def plot_sweep(name: str, rows: list[PointResult], path: Path) -> None:
    """Top: overlap mass and TV (with the 3 - 2 sqrt 2 bound); bottom: error in bf16 ULPs."""
    x = [r.x for r in rows]
    plt = pyplot()
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(7, 6), sharex=True)
    top.plot(x, [r.mean_mass for r in rows], "o-", label="mean overlap mass m")
    top.plot(x, [r.mean_tv for r in rows], "s-", label="mean TV(exact, two-call)")
    top.plot(x, [r.max_tv for r in rows], "s:", label="max TV")
    top.axhline(TV_BOUND, color="gray", linestyle="--", label="TV bound 3 - 2 sqrt 2")
    top.set_ylabel("probability")
    top.legend(fontsize=8)
    bottom.plot(x, [r.bf16_ulps for r in rows], "o-", label="max |err|")
    bottom.plot(x, [r.mean_abs_error / r.bf16_ulp for r in rows], "s-", label="mean |err|")
    bottom.set_ylabel("output error, bf16 ULPs at output scale")
    bottom.set_xlabel(SWEEPS[name])
    bottom.legend(fontsize=8)
    if name in LOG_X:
        bottom.set_xscale("symlog", linthresh=1)
    top.set_title(f"two-call overlap error vs {SWEEPS[name]}", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m prefix_referee.verify.two_call_analysis",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT,
                        help=f"directory for the PNG plots (default {DEFAULT_OUT})")
    parser.add_argument("--summary", type=Path, default=DEFAULT_SUMMARY,
                        help=f"where to write the JSON summary (default {DEFAULT_SUMMARY})")
    args = parser.parse_args(argv)

    with one_torch_thread():
        results = run_sweeps()
    console = Console()
    args.out.mkdir(parents=True, exist_ok=True)
    plots_missing = None
    for name in SWEEPS:
        rows = [r for r in results if r.sweep == name]
        console.print(sweep_table(name, rows))
        if plots_missing is None:
            try:
                plot_sweep(name, rows, args.out / f"{name}.png")
            except PlotsUnavailable as exc:
                plots_missing = str(exc)
    worst = max(results, key=lambda r: r.bf16_ulps)
    console.print(
        f"worst case: {worst.bf16_ulps:.1f} bf16 ULPs at the output's scale "
        f"(max |err| {worst.max_abs_error:.4f}, one ULP {worst.bf16_ulp:.3g}; "
        f"{worst.sweep} = {worst.x:g}); largest TV {max(r.max_tv for r in results):.6f} "
        f"<= 3 - 2 sqrt 2 = {TV_BOUND:.6f}; largest LSE shift "
        f"{max(r.max_lse_shift for r in results):.4f} <= ln 2")
    args.summary.parent.mkdir(parents=True, exist_ok=True)
    args.summary.write_text(compact_json(summary(results)))
    plots = f"no plots: {plots_missing}" if plots_missing else f"plots in {args.out}"
    console.print(f"{plots}, summary in {args.summary}", markup=False)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
