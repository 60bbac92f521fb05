"""A/B experiments: two model versions side by side, each user always served by the same one.

The control arm is the model of ``MOEREC_MODEL_PATH``; the optional challenger arm is
``MOEREC_AB_MODEL_PATH``. Each arm has its own model slot (own model process, micro-batcher,
supervisor and circuit breaker), so a failing challenger never slows or trips the control.

Assignment is a keyed hash of the user id: ``blake2b(user id, key=salt)`` read as a number in
[0, 1), and a user whose number is below ``MOEREC_AB_FRACTION`` is in the challenger arm. It
needs no storage, every replica computes the same answer, and raising the fraction only
moves users from control to challenger, never back. A new salt draws an independent split.
Anonymous histories carry no user id: they are assigned by the request's optional
``assignment_key`` (a session or device id), else they go to the control arm.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Literal

from moerec.serving.model_slot import ModelSlot
from moerec.serving.resilience import MODEL

Arm = Literal["control", "challenger"]
CONTROL: Arm = "control"
CHALLENGER: Arm = "challenger"
ARMS: tuple[Arm, ...] = (CONTROL, CHALLENGER)

_HASH_SPACE = 2**64


def bucket(key: str, salt: str) -> float:
    """Where ``key`` falls in [0, 1) for ``salt``: uniform, stable, independent across salts."""
    salt_key = hashlib.blake2b(salt.encode("utf-8", "surrogatepass"), digest_size=32).digest()
    digest = hashlib.blake2b(
        key.encode("utf-8", "surrogatepass"), key=salt_key, digest_size=8, person=b"moerec-ab"
    ).digest()
    return int.from_bytes(digest, "big") / _HASH_SPACE


@dataclass(frozen=True)
class Split:
    """Which arm a key belongs to."""

    fraction: float  # share of keys in the challenger arm
    salt: str

    def arm_of(self, key: str | None) -> Arm:
        if key is None or self.fraction <= 0.0:
            return CONTROL
        return CHALLENGER if bucket(key, self.salt) < self.fraction else CONTROL


class Arms:
    """The model slot of each arm, and the split between them.

    Without a challenger there is no experiment: every request is served by the control slot
    and responses and events carry no arm (``arm`` is None), exactly as before experiments
    existed.
    """

    def __init__(self, control: ModelSlot, challenger: ModelSlot | None, split: Split) -> None:
        self.control = control
        self.challenger = challenger
        self.split = split

    @property
    def experiment(self) -> bool:
        return self.challenger is not None

    def assign(self, key: str | None) -> tuple[Arm | None, ModelSlot]:
        """The arm of ``key`` (None when no experiment runs) and the slot that serves it."""
        if self.challenger is None:
            return None, self.control
        arm = self.split.arm_of(key)
        return arm, self.challenger if arm == CHALLENGER else self.control

    def slot(self, arm: Arm) -> ModelSlot | None:
        return self.control if arm == CONTROL else self.challenger

    def fraction(self) -> float:
        """The challenger's configured share (0 without one)."""
        return self.split.fraction if self.challenger is not None else 0.0


def breaker_name(arm: Arm | None) -> str:
    """The circuit breaker of an arm's model: the control keeps the plain ``model`` name."""
    return f"{MODEL}_{CHALLENGER}" if arm == CHALLENGER else MODEL


def metric_arm(arm: Arm | None) -> Arm:
    """The ``arm`` label: without an experiment the one model is the control."""
    return arm or CONTROL


def cache_namespace(arm: Arm | None) -> str:
    """Cache namespace of an arm's answers: two arms never share an entry, even when they
    serve the same model version (an A/A test), because each answer names its arm."""
    return "rec" if arm is None else f"rec-{arm}"
