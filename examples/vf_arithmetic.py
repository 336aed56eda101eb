"""An environment written for verifiers, as on prime-rl's Environments Hub: sums to answer in <answer> tags, with
a second try after "not quite". distillery runs it through its adapter (specialists/verifiers_env.py):

python -m jobs.train_specialist specialist=vf_arithmetic   # configs/specialist/vf_arithmetic.yaml names it
"""

import random

import verifiers as vf
from datasets import Dataset


def sums(n: int, seed: int) -> Dataset:
    rng = random.Random(seed)
    rows = [(rng.randint(2, 99), rng.randint(2, 99)) for _ in range(n)]
    return Dataset.from_list([{"question": f"What is {a} + {b}?", "answer": str(a + b)} for a, b in rows])


class RetrySum(vf.MultiTurnEnv):
    async def env_response(self, messages: vf.Messages, state: vf.State, **kwargs) -> vf.Messages:
        if self.parser.parse_answer(messages) == state["answer"]:  # solved: the episode ends here
            state["final_env_response"] = [{"role": "user", "content": "Correct."}]
            return state["final_env_response"]
        return [{"role": "user", "content": "Not quite. Answer again in <answer> tags."}]


def load_environment(num_train: int = 500, num_eval: int = 50, max_turns: int = 2) -> vf.Environment:
    parser = vf.XMLParser(["answer"], answer_field="answer")

    def correct(completion: vf.Messages, answer: str, **kwargs) -> float:
        return 1.0 if parser.parse_answer(completion) == answer else 0.0

    def first_try(completion: vf.Messages, answer: str, **kwargs) -> float:
        tries = sum(1 for m in completion if m["role"] == "assistant")
        return 1.0 if tries == 1 and correct(completion, answer) else 0.0

    rubric = vf.Rubric(funcs=[correct, first_try], weights=[0.8, 0.2], parser=parser)
    return RetrySum(dataset=sums(num_train, seed=1), eval_dataset=sums(num_eval, seed=2), parser=parser,
                    rubric=rubric, max_turns=max_turns,
                    system_prompt="Answer with the number alone in <answer></answer> tags.")  # fmt: skip
