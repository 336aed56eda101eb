"""Environments written for verifiers (the environment library prime-rl and Miles train on), driven by our
multi-turn rollout driver: ``specialist.train_data=verifiers specialist.eval_data=verifiers
specialist.env=<module>`` (and ``specialist.env_args``, the keyword arguments of its ``load_environment``).

* **Loading.** ``vf.load_environment(module, **env_args)``, once per process and environment, in the main thread:
  a verifiers ``Environment`` installs SIGINT/SIGTERM handlers when it is built, which are put back as they were
  (the job's Ctrl-C line stays ours). verifiers 0.1.10 (``pyproject.toml``): the newest whose pins agree with ours.
* **Tasks.** Its dataset's rows: where it has an ``eval_dataset`` too, that is held out and ``dataset`` trained;
  a single dataset is split by a hash of the module and the row's ``example_id`` (``split_of``), so the two
  never share a row. A row's prompt is a system message (optional) and one user message.
* **Episodes.** ``VerifiersEpisode`` keeps the environment's own ``State``, as its ``MultiTurnEnv.rollout`` would,
  with our policy in place of the OpenAI client: each model turn is a trajectory step (an assistant message),
  the environment's reply comes from its ``get_prompt_messages`` (which calls ``env_response``) and goes back to
  the model as the chat template's user turn (``observation_role``), and the episode ends where its ``@vf.stop``
  conditions say (its ``max_turns``, a ``final_env_response``, an error). The reward is its rubric's
  ``score_rollout`` of the finished state (``state["reward"]``, the weighted sum of its reward functions), the
  reason the stop condition. An exception in the environment's code ends the episode with 0 and a
  ``reward_error`` reason, which counts towards ``specialist.max_reward_error_rate`` like any failed reward.
* **Tools** (``oai_tools``: ``ToolEnv``, ``StatefulToolEnv``, ...): declared through the chat template (the task's
  ``tools``); a turn's ``<tool_call>`` blocks become the assistant message's OpenAI ``tool_calls`` (its content the
  text before them), as a server's tool parser would hand them to verifiers, and the environment's tool messages
  go back as the template's tool results (several in a row for parallel calls). A turn without a well-formed call
  has no ``tool_calls``, so a ``ToolEnv`` ends there (``no_tools_called``); a malformed one is also counted as a
  tool error.
* **Not supported**, refused with one line when the environment loads: ``message_type="completion"``, few-shot
  prompts, group-level reward functions.
"""

from __future__ import annotations

import asyncio
import functools
import importlib.util
import json
import logging
import os
import signal
import threading
from typing import Any

from rl.chat_tools import CALL_OPEN
from rl.types import Task
from specialists.agent_env import StepResult
from specialists.synthetic import split_of
from specialists.tool_calls import CallError, parse_tool_calls

DOMAIN = "agent"
SOURCE = "verifiers"
POLICY_NAME = "distillery"  # the model name a verifiers State records; no client is ever called


class VerifiersEnvError(ValueError):
    """The verifiers environment named by ``specialist.env`` cannot be loaded or is not one we can run."""


_ENVS: dict[str, Any] = {}
_LOOPS = threading.local()


def _run(coro: Any) -> Any:
    """Run a verifiers coroutine to its end on this thread's event loop (one per thread, kept)."""
    loop = getattr(_LOOPS, "loop", None)
    if loop is None:
        loop = _LOOPS.loop = asyncio.new_event_loop()
    return loop.run_until_complete(coro)


def load_env(module: str, env_args: dict[str, Any] | None = None) -> Any:
    """The verifiers environment ``module`` builds with ``env_args``, loaded once per process (main thread only:
    verifiers sets signal handlers while it builds one, which are restored after)."""
    args = dict(env_args or {})
    key = json.dumps([module, args], sort_keys=True, default=str)
    if key in _ENVS:
        return _ENVS[key]
    if threading.current_thread() is not threading.main_thread():
        raise VerifiersEnvError(f"specialist.env={module}: a verifiers environment is loaded in the main thread "
                                "(it sets signal handlers), before any episode")  # fmt: skip
    name = module.replace("-", "_").split("/")[-1]  # the module vf.load_environment imports
    try:
        found = importlib.util.find_spec(name) is not None
    except ImportError:  # its parent package is missing
        found = False
    if not found:  # said before importing verifiers, which takes seconds
        raise VerifiersEnvError(f"specialist.env={module}: cannot import it (No module named {name!r})")
    os.environ.setdefault("VF_LOG_LEVEL", "WARNING")  # its reward functions' errors, not its progress
    handlers = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    quiet = logging.getLogger("verifiers.utils.env_utils")  # it logs a traceback of what we say in one line
    level = quiet.level
    try:
        import verifiers as vf

        quiet.setLevel(logging.CRITICAL + 1)
        env = vf.load_environment(module, **args)
    except Exception as err:  # the environment's own code: whatever it raises is a bad config here
        cause = err.__cause__ or err  # verifiers wraps what the module raised
        if isinstance(cause, ImportError):
            raise VerifiersEnvError(f"specialist.env={module}: cannot import it ({cause})") from err
        raise VerifiersEnvError(f"specialist.env={module}: load_environment({_args_text(args)}) raised "
                                f"{type(cause).__name__}: {' '.join(str(cause).split())}") from err  # fmt: skip
    finally:
        quiet.setLevel(level)
        for sig, handler in handlers.items():
            signal.signal(sig, handler)
    if problem := unsupported(env):
        raise VerifiersEnvError(f"specialist.env={module}: {problem}")
    _ENVS[key] = env
    return env


def _args_text(args: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v!r}" for k, v in args.items())


def unsupported(env: Any) -> str:
    """Why we cannot run ``env`` ("" when we can)."""
    if getattr(env, "message_type", "chat") != "chat":
        return f"message_type={env.message_type!r} environments are not supported (chat only)"
    rubrics = getattr(env.rubric, "rubrics", [env.rubric])
    if any(r._get_group_reward_funcs() for r in rubrics if hasattr(r, "_get_group_reward_funcs")):
        return "group-level reward functions are not supported (each episode is scored on its own)"
    return ""


def _prompt(module: str, messages: list[dict[str, Any]]) -> tuple[str, str]:
    """(system, user) of a row's prompt messages."""
    roles = [m.get("role") for m in messages]
    texts = all(isinstance(m.get("content"), str) for m in messages)
    if roles not in (["user"], ["system", "user"]) or not texts:
        raise VerifiersEnvError(f"specialist.env={module}: a prompt must be an optional system message and one "
                                f"user message of text (few-shot prompts are not supported), got roles {roles}")  # fmt: skip
    return (messages[0]["content"] if len(messages) == 2 else ""), messages[-1]["content"]


def _datasets(env: Any) -> dict[str, str]:
    """Which of the environment's datasets each split reads: ``dataset`` / ``eval_dataset``, or ``dataset+hash``
    (one dataset, split by row)."""
    has = {name: getattr(env, f"{name}_source", None) is not None or getattr(env, name, None) is not None
           for name in ("dataset", "eval_dataset")}  # fmt: skip
    if has["dataset"] and has["eval_dataset"]:
        return {"train": "dataset", "heldout": "eval_dataset"}
    only = "dataset" if has["dataset"] else "eval_dataset"
    return {"train": f"{only}+hash", "heldout": f"{only}+hash"}


@functools.lru_cache(maxsize=8)
def _dataset_rows(module: str, args_json: str, which: str) -> Any:
    """The rows (formatted by verifiers: ``prompt`` messages, ``answer``, ``info``, ``example_id``) of one of the
    environment's datasets, built once per process."""
    env = load_env(module, json.loads(args_json))
    return env.get_dataset() if which.removesuffix("+hash") == "dataset" else env.get_eval_dataset()


def verifiers_tasks(module: str, env_args: dict[str, Any], n: int, split: str) -> list[Task]:
    """Up to ``n`` rows of ``split`` (0: all) as tasks; the environment is loaded here (the job's main thread)."""
    tasks = _split_tasks(module, json.dumps(env_args, sort_keys=True), split)
    return list(tasks[:n] if n else tasks)


@functools.lru_cache(maxsize=8)
def _split_tasks(module: str, args_json: str, split: str) -> tuple[Task, ...]:
    """Every row of ``split`` as a task, read once per process (the input check and the run both ask)."""
    env = load_env(module, json.loads(args_json))
    which = _datasets(env)[split]
    tools = json.dumps(env.oai_tools) if getattr(env, "oai_tools", None) else ""
    rows = _dataset_rows(module, args_json, which)
    tasks = []
    for index in range(len(rows)):
        row = rows[index]
        example = row.get("example_id", index)
        if which.endswith("+hash") and split_of(f"verifiers/{module}/{example}") != split:
            continue
        system, user = _prompt(module, row["prompt"])
        answer = json.dumps({"env": module, "args": json.loads(args_json), "dataset": which, "row": index})
        tasks.append(Task(uid=f"{SOURCE}/{module}/{split}/{example}", domain=DOMAIN, prompt=user,
                          answer=answer, source=SOURCE, system=system, tools=tools))  # fmt: skip
    if not tasks:
        raise VerifiersEnvError(f"specialist.env={module}: no {split} rows (its {which.removesuffix('+hash')} "
                                f"has {len(rows)})")  # fmt: skip
    return tuple(tasks)


class VerifiersEpisode:
    """One episode of a verifiers environment, in our ``Environment`` protocol (``reset``, ``step``)."""

    def __init__(self, env: Any, row: dict[str, Any]):
        self.env, self.row = env, row
        self.uses_tools = bool(getattr(env, "oai_tools", None))
        # a verifiers environment answers as the user, or with the results of the tools it declares
        self.observation_role = "tool" if self.uses_tools else "user"
        self.state: Any = None
        self.messages: list[dict[str, Any]] = []  # the conversation the next model turn continues
        self.call_error = ""  # why the last turn's tool call was malformed ("" where it was not)

    def reset(self) -> str:
        self.state = _run(self.env.init_state(self.row, client=None, model=POLICY_NAME))
        self._guarded(self.env.setup_state(self.state), replace_state=True)
        self.messages = list(self.state["prompt"])
        return str(self.messages[-1]["content"])

    def step(self, action: str) -> StepResult:
        from verifiers.types import TrajectoryStep

        completion: Any = [self._assistant_message(action)]  # vf.Messages: a list of chat messages
        prompt: Any = self.messages
        step = TrajectoryStep(prompt=prompt, completion=completion, response=None, tokens=None, reward=None,
                              advantage=None, is_truncated=False, trajectory_id=self.state["trajectory_id"],
                              extras={})  # fmt: skip
        self._guarded(self.env.add_trajectory_step(self.state, step))
        if not self._completed():  # the environment answers (env_response), unless that ends the episode
            before = len(self.messages) + 1
            messages = self._guarded(self.env.get_prompt_messages(self.state))
            if not self._completed() and messages is not None:
                self.messages = list(messages)
                replies = tuple(_text(m.get("content")) for m in messages[before:])
                info: dict[str, Any] = {"turn": len(self.state["trajectory"])}
                if not self.uses_tools:
                    return StepResult("\n\n".join(replies), False, 0.0, info)
                if calls := completion[0].get("tool_calls"):
                    info["tool"] = calls[0]["function"]["name"]
                return StepResult(replies[0] if len(replies) == 1 else replies, False, 0.0, info)
        return self._finish()

    def _assistant_message(self, action: str) -> dict[str, Any]:
        """The model's turn as verifiers receives it from an OpenAI-compatible server: with tools, its
        ``<tool_call>`` blocks as ``tool_calls`` and the text before them as the content."""
        self.call_error = ""
        if not self.uses_tools:
            return {"role": "assistant", "content": action}
        calls = parse_tool_calls(action)
        if isinstance(calls, CallError):
            self.call_error = "" if calls.reason == "no_tool_call" else calls.reason
            return {"role": "assistant", "content": action}
        turn = len(self.state["trajectory"])
        return {"role": "assistant", "content": action[: action.find(CALL_OPEN)].strip(), "tool_calls": [
            {"id": f"call_{turn}_{i}", "type": "function",
             "function": {"name": call.name, "arguments": json.dumps(call.arguments)}}
            for i, call in enumerate(calls)
        ]}  # fmt: skip

    def _completed(self) -> bool:
        """The environment's stop conditions (each ``is_completed`` that is true runs its cleanup: asked once
        per state change)."""
        try:
            return bool(_run(self.env.is_completed(self.state)))
        except Exception as err:  # a stop condition of the environment's own that raised
            self.state["error"] = err
            self.state["stop_condition"] = "has_error"
            return True

    def _finish(self) -> StepResult:
        self._guarded(self.env.render_completion(self.state))
        reason = str(self.state.get("stop_condition") or "done")
        if (
            error := self.state.get("error")
        ) is not None:  # its bug: no credit, and a reward error that counts
            # towards specialist.max_reward_error_rate, so a broken environment stops the run instead of training
            reason = f"reward_error: environment raised {type(error).__name__}: {' '.join(str(error).split())[:200]}"
            return StepResult("", True, 0.0, {"reason": reason, "turns": len(self.state["trajectory"])})
        try:
            _run(self.env.rubric.score_rollout(self.state))
            reward = float(self.state["reward"])
        except Exception as err:  # the rubric's own failure scores 0, with the reason
            reward, reason = 0.0, f"reward_error: {type(err).__name__}: {' '.join(str(err).split())[:200]}"
        info = {"reason": reason, "turns": len(self.state["trajectory"]), **(self.state.get("metrics") or {})}
        if self.call_error:  # the last turn's call was malformed: the driver counts a tool error
            info |= {"tool_error": True, "error": self.call_error}
        return StepResult("", True, reward, info)

    def _guarded(self, coro: Any, replace_state: bool = False) -> Any:
        """Run one of the environment's coroutines; what it raises is recorded as the state's error (its
        ``has_error`` stop condition then ends the episode), as verifiers' own rollout loop records a
        ``vf.Error``."""
        try:
            out = _run(coro)
        except Exception as err:
            self.state["error"] = err
            return None
        if replace_state:
            self.state = out
        return out


def _text(content: Any) -> str:
    """A message's content as text (content parts: their text parts)."""
    if isinstance(content, list):
        return "".join(str(part.get("text", "")) for part in content if isinstance(part, dict))
    return "" if content is None else str(content)


def make_verifiers_env(task: Task) -> VerifiersEpisode:
    """The episode of ``task``, reset."""
    spec = json.loads(task.answer)
    env = load_env(spec["env"], spec["args"])
    rows = _dataset_rows(spec["env"], json.dumps(spec["args"], sort_keys=True), spec["dataset"])
    episode = VerifiersEpisode(env, rows[int(spec["row"])])
    episode.reset()
    return episode
