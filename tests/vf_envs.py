"""verifiers environments for tests/test_agent_envs.py, loaded by module name as verifiers loads any
(``vf.load_environment("tests.vf_envs", kind=...)``): a single-turn one, ones that break, ones we refuse."""

from __future__ import annotations

import verifiers as vf
from datasets import Dataset

WORDS = ["stone", "river", "cloud", "amber", "maple", "ocean", "pixel", "tiger", "lemon", "crane"]
WORDS += ["frost", "globe"]


class Broken(vf.MultiTurnEnv):
    async def env_response(self, messages: vf.Messages, state: vf.State, **kwargs) -> vf.Messages:
        raise RuntimeError("the environment's own bug")


def load_environment(kind: str = "reverse") -> vf.Environment:
    """``reverse``: spell a word backwards in <answer> tags (one dataset: split by row); ``broken``: a multi-turn
    env whose env_response raises; ``tools``: declares a tool; ``fewshot``: example turns before the question; any
    other: load_environment itself raises."""
    data = Dataset.from_list([{"question": f"Spell '{w}' backwards.", "answer": w[::-1]} for w in WORDS])
    parser = vf.XMLParser(["answer"], answer_field="answer")

    def exact(completion: vf.Messages, answer: str, **kwargs) -> float:
        return 1.0 if parser.parse_answer(completion) == answer else 0.0

    rubric = vf.Rubric(funcs=[exact, parser.get_format_reward_func()], weights=[1.0, 0.2], parser=parser)
    if kind == "reverse":
        return vf.SingleTurnEnv(dataset=data, parser=parser, rubric=rubric)
    if kind == "broken":
        return Broken(dataset=data, parser=parser, rubric=rubric, max_turns=3)
    if kind == "tools":
        tool = {"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}
        return vf.SingleTurnEnv(dataset=data, parser=parser, rubric=rubric, oai_tools=[tool])
    if kind == "fewshot":
        shots = [{"role": "user", "content": "Spell 'ab' backwards."}, {"role": "assistant", "content": "ba"}]
        return vf.SingleTurnEnv(dataset=data, parser=parser, rubric=rubric, few_shot=shots)
    raise ValueError(f"no such kind {kind!r}")
