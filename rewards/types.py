"""What a reward returns. Here, below ``rl/``, so the graders import no torch and nothing from the trainer."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Reward:
    """A scored completion: the score and why it got it (never a silent 0)."""

    score: float
    reason: str  # e.g. "correct", "wrong_answer", "no_boxed_answer", "unparsable_answer"
