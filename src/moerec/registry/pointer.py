"""The promotion pointer: one small file naming the version a model folder serves.

    <registry>/<name>/PROMOTED    "v0003\\n"

It is replaced atomically (temporary file in the same folder, fsync, ``os.replace``), so a
reader sees the old name or the new one, never half a file. This module only reads and writes
the pointer; :mod:`moerec.registry.promotion` decides what may be promoted.
"""

from __future__ import annotations

import contextlib
import os
import re
import tempfile
from pathlib import Path

from moerec import MoerecError

POINTER = "PROMOTED"
VERSION_NAME = re.compile(r"^v(\d{4,})$")


class PointerError(MoerecError):
    """A promotion pointer that cannot be read as a version name."""


def read_pointer(model_dir: Path) -> str | None:
    """The version name in ``model_dir/PROMOTED``, or None when nothing was promoted."""
    path = model_dir / POINTER
    try:
        text = path.read_text(encoding="utf-8")
    except (FileNotFoundError, NotADirectoryError):
        return None
    except OSError as exc:
        raise PointerError(f"{path}: cannot read the promotion pointer: {exc}") from None
    name = text.strip()
    if not VERSION_NAME.match(name):
        raise PointerError(
            f"{path}: holds {name[:40]!r}, not a version name like v0001; promote a version "
            f"again with `moerec registry promote {model_dir} VERSION`"
        )
    return name


def pointer_signature(model_dir: Path) -> tuple[str, int, int] | None:
    """(content, inode, modification time in ns) of the pointer: every write of it changes
    the inode (a new file is renamed over the old), even where mtimes are coarse."""
    path = model_dir / POINTER
    try:
        stat = path.stat()
        return path.read_text(encoding="utf-8").strip(), stat.st_ino, stat.st_mtime_ns
    except (FileNotFoundError, NotADirectoryError):
        return None


def write_pointer(model_dir: Path, version: str) -> None:
    """Point ``model_dir`` at ``version``, atomically and durably."""
    if not VERSION_NAME.match(version):
        raise PointerError(f"{version!r} is not a version name like v0001")
    handle, temp_name = tempfile.mkstemp(prefix=f".{POINTER}-", dir=model_dir)
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as f:
            f.write(version + "\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(temp_name, model_dir / POINTER)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temp_name)
        raise
    _fsync_dir(model_dir)


def _fsync_dir(folder: Path) -> None:
    """Make the rename itself durable (a no-op where folders cannot be opened)."""
    try:
        handle = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(handle)
    except OSError:
        pass
    finally:
        os.close(handle)
