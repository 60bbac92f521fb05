"""The benchmarks page is shared: each benchmark script owns one marked section of it.

``splice_section`` replaces the text between a script's markers and leaves the rest of the page
as it is, so rerunning one benchmark never drops another's figures. Imported by the scripts in
this folder (run as ``python benchmarks/NAME.py``, which puts this folder on ``sys.path``).
"""

from __future__ import annotations

from collections.abc import Callable


def splice_section(
    text: str,
    section: str,
    begin: str,
    end: str,
    place: Callable[[str, str], str] | None = None,
) -> str:
    """``text`` with the block between ``begin`` and ``end`` replaced by ``section``.

    Without the markers, ``place(text, block)`` puts the new block where it belongs; by
    default it is appended. Text outside the markers is never changed.
    """
    block = f"{begin}\n{section.strip()}\n{end}\n"
    start, stop = text.find(begin), text.find(end)
    if start != -1 and stop > start:
        rest = text[stop + len(end) :].lstrip("\n")
        return text[:start] + block + ("\n" + rest if rest else "")
    if place is not None:
        return place(text, block)
    return (text.rstrip("\n") + "\n\n" if text.strip() else "") + block
