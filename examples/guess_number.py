"""An environment of your own in 30 lines: find a number from 1 to 100 with "higher" / "lower" hints.

python -m jobs.train_specialist specialist=guess_number   # configs/specialist/guess_number.yaml names it
"""

import random
from typing import ClassVar

from specialists.agent_env import StepResult, ToolCall, read_call

GUESS = {"type": "function", "function": {"name": "guess", "description": "Guess the number; I answer higher or lower.",
         "parameters": {"type": "object", "properties": {"number": {"type": "string"}}, "required": ["number"]}}}  # fmt: skip


class GuessNumber:
    tools: ClassVar = [
        GUESS
    ]  # declared by the chat template; the model calls guess, the hint comes back as its result

    def __init__(self, seed: int) -> None:
        self.secret = random.Random(seed).randint(1, 100)

    def reset(self) -> str:
        return "I am thinking of a number from 1 to 100. Find it with the guess tool."

    def step(self, action: str) -> StepResult:
        call = read_call(action, {"guess": "number"})  # the call, in either tool-call format
        if not isinstance(call, ToolCall) or not call.arg.strip().isdigit():
            return StepResult("error: call guess with a whole number", done=False, reward=0.0,
                              info={"tool_error": True, "error": "bad_guess"})  # fmt: skip
        number = int(call.arg)
        if number == self.secret:
            return StepResult("", done=True, reward=1.0, info={"reason": "found"})
        hint = "higher" if number < self.secret else "lower"
        return StepResult(hint, done=False, reward=0.0, info={"tool": "guess"})
