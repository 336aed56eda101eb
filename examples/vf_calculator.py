"""A tool environment written for verifiers (a ``vf.ToolEnv``, as on prime-rl's Environments Hub): sums of two
four-digit numbers with an ``add`` tool, the answer in <answer> tags. distillery declares the tool through the
model's chat template and hands the model's <tool_call> blocks to the environment as OpenAI tool calls
(specialists/verifiers_env.py):

python -m jobs.train_specialist specialist=vf_calculator model=...   # configs/specialist/vf_calculator.yaml
"""

import random

import verifiers as vf
from datasets import Dataset


def add(a: int, b: int) -> int:
    """Add two whole numbers.

    Args:
        a: The first number.
        b: The second number.
    """
    return a + b


def sums(n: int, seed: int) -> Dataset:
    rng = random.Random(seed)
    rows = [(rng.randint(1000, 9999), rng.randint(1000, 9999)) for _ in range(n)]
    question = "What is {} + {}? Use the add tool, then answer in <answer></answer> tags."
    return Dataset.from_list([{"question": question.format(a, b), "answer": str(a + b)} for a, b in rows])


def load_environment(num_train: int = 500, num_eval: int = 50, max_turns: int = 3) -> vf.Environment:
    parser = vf.XMLParser(["answer"], answer_field="answer")

    def correct(completion: vf.Messages, answer: str, **kwargs) -> float:
        return 1.0 if parser.parse_answer(completion) == answer else 0.0

    return vf.ToolEnv(dataset=sums(num_train, seed=1), eval_dataset=sums(num_eval, seed=2), tools=[add],
                      parser=parser, rubric=vf.Rubric(funcs=[correct], parser=parser), max_turns=max_turns)  # fmt: skip
