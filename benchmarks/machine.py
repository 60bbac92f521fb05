"""What every results file records about the machine that measured it.

The processor and the SIMD kernels torch picked for it matter beyond speed: kernels of different
vector widths sum in different orders, so one seed's training curve on one processor need not be
bit-identical to the same seed's on another; across processors, compare within noise.
"""

from __future__ import annotations

import contextlib
import os
import platform
from pathlib import Path
from typing import Any


def cpu_model() -> str:
    """The processor's name from /proc/cpuinfo, or what ``platform`` knows elsewhere."""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8").splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def machine_info() -> dict[str, Any]:
    import torch  # here, so that a script's load-generator process need not import it

    return {
        "cpus": os.cpu_count(),
        "cpu_model": cpu_model(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "torch": torch.__version__,
        "python": platform.python_version(),
    }
