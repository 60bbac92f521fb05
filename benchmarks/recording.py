"""How the benchmark scripts record a run beside its figures, in one shape for every results file.

Imported by the scripts in this folder (run as ``python benchmarks/NAME.py``, which puts this
folder on ``sys.path``), like ``machine`` and ``docs_section``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np


def command_line(script: str, argv: Sequence[str], data: Path | None) -> str:
    """The command that reproduces this run, with the local data folder shown as DATA: a
    results file names no machine's paths."""
    shown = [f"DATA/{data.parent.name}/{data.name}" if data and a == str(data) else a for a in argv]
    return " ".join([f"python benchmarks/{script}", *shown])


def percentiles(values: Sequence[float]) -> dict[str, float]:
    """p50/p95/p99 of latencies, in the unit they were measured in, and how many there were."""
    q = np.percentile(values, [50, 95, 99])
    return {"p50": float(q[0]), "p95": float(q[1]), "p99": float(q[2]), "n": len(values)}
