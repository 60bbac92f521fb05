"""Process-level settings that make CPU training and inference fast.

PyTorch on CPU allocates and frees large tensors every step. glibc's malloc hands big blocks
back to the kernel at once, so each step page-faults them in again, which is slow on virtual
machines; jemalloc keeps freed memory for reuse. benchmarks/speed.py on the Beauty data set
(2-core VM) measured a MoE training step at 0.26-0.31 s with glibc and 0.19 s with jemalloc in
two runs, and a lower peak memory; with the cores shared by another process the gap grew
several-fold.
PyTorch's own CPU tuning guide recommends the same switch. The ``moerec`` command re-executes
itself once with jemalloc preloaded when the library is installed (Debian/Ubuntu:
``libjemalloc2``); set ``MOEREC_JEMALLOC=0`` to keep the system allocator.
"""

from __future__ import annotations

import ctypes.util
import os
import sys
from collections.abc import Mapping
from pathlib import Path

JEMALLOC_CONF = "retain:true,dirty_decay_ms:-1,muzzy_decay_ms:-1"
_SWITCH = "MOEREC_JEMALLOC"


def jemalloc_library() -> str | None:
    """The jemalloc shared library the dynamic loader can find, or None."""
    name = ctypes.util.find_library("jemalloc")
    if name:
        return name
    for directory in ("/usr/lib/x86_64-linux-gnu", "/usr/lib/aarch64-linux-gnu", "/usr/lib64"):
        candidate = Path(directory) / "libjemalloc.so.2"
        if candidate.is_file():
            return str(candidate)
    return None


def jemalloc_environment(environ: Mapping[str, str], library: str | None) -> dict[str, str] | None:
    """The environment to re-execute with, or None when nothing should change."""
    if environ.get(_SWITCH, "1") == "0" or library is None or not sys.platform.startswith("linux"):
        return None
    if "jemalloc" in environ.get("LD_PRELOAD", ""):
        return None  # already preloaded (by us or the user)
    env = dict(environ)
    env["LD_PRELOAD"] = ":".join(filter(None, [library, environ.get("LD_PRELOAD", "")]))
    env.setdefault("MALLOC_CONF", JEMALLOC_CONF)
    env[_SWITCH] = "0"  # never loop
    return env


def reexec_with_jemalloc() -> None:
    """Replace this process with itself under jemalloc, if available and not yet active."""
    env = jemalloc_environment(os.environ, jemalloc_library())
    if env is None:
        return
    try:
        os.execve(sys.executable, [sys.executable, *sys.orig_argv[1:]], env)  # noqa: S606
    except OSError:
        return  # keep running on the system allocator


def active_allocator() -> str:
    """'jemalloc' if it is mapped into this process, else 'system'."""
    try:
        maps = Path("/proc/self/maps").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return "unknown"
    return "jemalloc" if "jemalloc" in maps else "system"
