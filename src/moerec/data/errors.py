"""Errors raised by the data layer.

Every error here is a :class:`~moerec.MoerecError`: the message alone must let a user fix the
problem (which file, which line, what was expected, what to do), because data problems are
the most common reason a run fails and a traceback into numpy or pyarrow helps nobody.
"""

from __future__ import annotations

from moerec import MoerecError


class DataError(MoerecError):
    """Data that cannot be used as asked (e.g. nothing left after filtering)."""


class DataFormatError(DataError):
    """An interactions file that cannot be read: missing, empty, malformed or undecodable.

    The message names the file and, where it makes sense, the 1-based line.
    """


class UnknownIdError(DataError, KeyError):
    """Raw ids (or encoded indices) that are not in a vocabulary.

    It is a ``KeyError`` so ``except KeyError`` keeps working, but prints like a normal error
    (``KeyError`` would otherwise show the message in quotes).
    """

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""
