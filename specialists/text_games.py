"""TextWorld (MIT; the ``textworld`` package, games generated offline from a seed) as agent episodes:
``specialist=textworld``.

A game is a small house of rooms with objects and a quest (take the key from the trunk, unlock the locker, ...).
Each model turn sends one command through the ``command`` tool (the chat template's ``<tool_call>`` format, or the
compact ``<tool>{"name": "command", "arg": ...}</tool>`` for a template without tools); the game's answer comes
back as the tool's result, with the commands the game accepts in that state (TextWorld's admissible commands:
what most LLM agents on TextWorld are given). The episode ends when the game is won or lost, or at
``specialist.max_turns`` (the rollout driver's limit; the reward is then the score so far).

The reward is the game's own verdict, read from the interpreter and TextWorld's planner, never from model text:
1.0 for a won game, else 0 (sparse, the default), or with ``specialist.dense_reward=true`` the share of the quest
done: 1 - (the commands TextWorld's planner still needs from the current state) / (those it needed at the start),
1.0 once won (a generated game's quest is worth one point, so its score alone has no steps in between). Meta
commands that act on the interpreter rather than the game (``quit``, ``restart``, ``restore``, ``undo``, ``save``,
...) and TextWorld's debug verbs (``tw-...``) are refused with an error observation, and a command is words only, at
most ``MAX_COMMAND_CHARS`` (no ``.``, ``then`` or other way to chain a second command after an allowed one, no text
TextWorld would read a win from).

Levels (``specialist.levels``): 1 one room and a one-step quest, 2 two rooms and two steps, 3 three rooms and three
steps. Train and held-out games are disjoint by seed (``specialists.synthetic.split_of`` of the seed).
Games are compiled once into ``$DISTILLERY_CACHE/textworld`` (Inform 7 ships in the wheel) and reused.
"""

from __future__ import annotations

import functools
import json
import os
import re
import subprocess
import sys
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from rl.cache import cache_dir
from rl.types import Task
from specialists.agent_env import StepResult, ToolCall, read_call
from specialists.synthetic import split_of
from specialists.tool_calls import echo

DOMAIN = "agent"
SOURCE = "textworld"
VERSION = "v1"  # bump when the generation options change: the cache keys on it
LEVELS = {1: (1, 3, 1), 2: (2, 4, 2), 3: (3, 6, 3)}  # level -> (rooms, objects, quest length)
MAX_COMMAND_CHARS = 100
COMMAND_CHARS = re.compile(r"[A-Za-z0-9' -]+")
MAX_LISTED_COMMANDS = 30
META_COMMANDS = frozenset({
    "quit", "q", "restart", "restore", "save", "undo", "script", "unscript", "noscript", "transcript",
    "recording", "replay", "verify", "version", "notify", "pronouns", "superbrief", "brief", "verbose",
})  # fmt: skip
TOOL = "command"
TOOLS = (
    {"type": "function", "function": {
        "name": TOOL, "description": "Send one command to the text adventure game and read what happens.",
        "parameters": {"type": "object", "required": [TOOL], "properties": {TOOL: {
            "type": "string", "description": "the command, e.g. 'go north', 'open chest', 'take key from chest'"}}}}},
)  # fmt: skip
INSTRUCTION = (
    "You are playing a text adventure game. Send one command per turn with the command tool; the game answers "
    "with what happens and the commands it accepts. Reach the goal in as few commands as you can."
)
# a small model given only the template's declaration tends to answer in a ```json block: one call spelled out
TEMPLATE_EXAMPLE = (
    " Each turn is one call, e.g.\n<tool_call>\n"
    '{"name": "command", "arguments": {"command": "go north"}}\n</tool_call>'
)
REASONS = ("won", "lost")  # an episode the driver's turn limit cut: "turn_limit" (rl.rollout.multiturn)


class GameError(ValueError):
    """A game could not be generated or started."""


@dataclass(frozen=True)
class Game:
    """A compiled game and what its task needs: the opening text, its points and a winning walkthrough."""

    path: Path  # the .z8 file
    intro: str  # the goal and the first room, as the prompt shows them
    max_score: int
    walkthrough: tuple[str, ...]


def _name(level: int, seed: int) -> str:
    return f"{VERSION}-level{level}-seed{seed}"


def game_dir() -> Path:
    return cache_dir() / "textworld"


def _infos() -> Any:
    import textworld  # heavy: only where games are made or played

    return textworld.EnvInfos(objective=True, description=True, inventory=True, admissible_commands=True,
                              max_score=True, score=True, won=True, lost=True, policy_commands=True)  # fmt: skip


def listing(state: Any) -> str:
    """The commands the game accepts in ``state`` (TextWorld's admissible commands, without look / inventory)."""
    commands = [c for c in state.admissible_commands or () if c not in ("look", "inventory")]
    return ", ".join(commands[:MAX_LISTED_COMMANDS])


def _generate(level: int, seed: int, into: Path) -> None:
    """Compile the game of (level, seed) into ``into`` and write its sidecar (``.task.json``) last."""
    try:
        import textworld
        from textworld.generator import compile_game, make_game
    except ImportError as err:
        raise GameError(
            "specialist=textworld needs the textworld package: pip install textworld==1.7.0"
        ) from err
    rooms, objects, quest_length = LEVELS[level]
    name = _name(level, seed)
    with tempfile.TemporaryDirectory(dir=into, prefix=f".{name}-") as tmp:
        options = textworld.GameOptions()
        options.seeds = seed
        options.nb_rooms, options.nb_objects, options.quest_length = rooms, objects, quest_length
        options.path = str(Path(tmp) / f"{name}.z8")
        options.force_recompile = True
        try:
            path = Path(compile_game(make_game(options), options))
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                env = textworld.start(str(path), request_infos=_infos())
                state = env.reset()
            env.close()
        except Exception as err:  # TextWorld's generator and compiler raise many kinds
            raise GameError(f"textworld game level {level} seed {seed} failed to generate: "
                            f"{type(err).__name__}: {err}") from err  # fmt: skip
        intro = (f"Goal: {(state.objective or '').strip()}\n\n{(state.description or '').strip()}\n\n"
                 f"{(state.inventory or '').strip()}\nCommands: {listing(state)}")  # fmt: skip
        side = {"intro": intro,
                "max_score": int(state.max_score or 0), "walkthrough": list(state.policy_commands or ())}  # fmt: skip
        os.replace(path, into / f"{name}.z8")
        # the .json beside the .z8 is the game's logic, which TextWorld's wrapper reads
        os.replace(path.with_suffix(".json"), into / f"{name}.json")
        (Path(tmp) / "task.json").write_text(json.dumps(side))
        os.replace(Path(tmp) / "task.json", into / f"{name}.task.json")


def _generate_one(level: int, seed: int, into: Path) -> str:
    """``_generate``, its failure as a line ("" when it worked)."""
    try:
        _generate(level, seed, into)
    except GameError as err:
        return str(err)
    return ""


def games(wanted: list[tuple[int, int]], workers: int | None = None) -> dict[tuple[int, int], Game]:
    """The games of (level, seed) pairs, compiling those not in the cache (in parallel processes, with a progress
    line). Raises ``GameError`` naming the first game that failed."""
    into = game_dir()
    into.mkdir(parents=True, exist_ok=True)
    missing = [(lv, s) for lv, s in wanted if not (into / f"{_name(lv, s)}.task.json").exists()]
    if missing:
        n = workers or max(1, min(len(missing), (os.cpu_count() or 1), 8))
        print(f"textworld: generating {len(missing)} games into {into} ({n} processes; ~2 s of a core each)",
              flush=True)  # fmt: skip
        if n == 1:
            errors = [_generate_one(lv, s, into) for lv, s in missing]
        else:  # processes of their own: the caller may be a Ray driver with threads (no fork), run as -m (no spawn)
            chunks = [missing[i::n] for i in range(n)]
            procs = [subprocess.Popen([sys.executable, "-m", "specialists.text_games", str(into),
                                       *(f"{lv}:{s}" for lv, s in chunk)], stdout=subprocess.PIPE,
                                      stderr=subprocess.PIPE, text=True) for chunk in chunks]  # fmt: skip
            errors = []
            for proc in procs:
                out, err = proc.communicate()
                if proc.returncode:
                    errors.append(out.strip() or (err.strip().splitlines() or ["no output"])[-1])
        if failed := [e for e in errors if e]:
            raise GameError(failed[0])
    return {(lv, s): load_game(lv, s) for lv, s in wanted}


def load_game(level: int, seed: int) -> Game:
    """A compiled game from the cache, compiling it if it is not there (another machine's rollout process)."""
    return _load_game(game_dir(), level, seed)


@functools.cache
def _load_game(folder: Path, level: int, seed: int) -> Game:
    """Read once per process and folder: every episode of a step builds its environment from it."""
    name = _name(level, seed)
    side_path = folder / f"{name}.task.json"
    if not side_path.exists():
        folder.mkdir(parents=True, exist_ok=True)
        _generate(level, seed, folder)
    side = json.loads(side_path.read_text())
    return Game(folder / f"{name}.z8", side["intro"], int(side["max_score"]), tuple(side["walkthrough"]))


def game_seeds(n: int, split: str, seed: int, levels: tuple[int, ...]) -> list[tuple[int, int]]:
    """``n`` (level, game seed) pairs of ``split``, levels in turn; a seed's split is a hash of the seed, so a
    train game and a held-out game never share one at any level."""
    if not levels or any(lv not in LEVELS for lv in levels):
        raise ValueError(f"textworld levels must be among {sorted(LEVELS)}, got {list(levels)}")
    out: list[tuple[int, int]] = []
    candidate = seed * 1_000_003
    while len(out) < n:
        level = levels[len(out) % len(levels)]
        if split_of(f"{SOURCE}/{VERSION}/{candidate}") == split:
            out.append((level, candidate))
        candidate += 1
    return out


def textworld_tasks(
    n: int,
    split: str,
    seed: int = 0,
    levels: tuple[int, ...] = (1, 2, 3),
    template: bool = True,
    dense: bool = False,
) -> list[Task]:
    """``n`` games of ``split`` as tasks; ``template``: the tool declared by the chat template (else the compact
    format's call is described in the prompt); ``dense``: rewarded by the share of points (else a won game)."""
    wanted = game_seeds(n, split, seed, levels)
    made = games(wanted)
    tasks = []
    for level, game_seed in wanted:
        game = made[(level, game_seed)]
        how = (
            TEMPLATE_EXAMPLE
            if template
            else ' Call it as <tool>{"name": "command", "arg": "go north"}</tool>.'
        )
        answer = {"level": level, "seed": game_seed, "max_score": game.max_score, "dense": dense}
        tasks.append(Task(uid=f"{SOURCE}/{split}/{_name(level, game_seed)}", domain=DOMAIN,
                          prompt=f"{INSTRUCTION}{how}\n\n{game.intro}", answer=json.dumps(answer), source=SOURCE,
                          level=level, tools=json.dumps(TOOLS) if template else ""))  # fmt: skip
    return tasks


def _spec(task: Task) -> dict[str, Any]:
    if task.source != SOURCE:
        raise ValueError(f"task {task.uid} is not a TextWorld task")
    return json.loads(task.answer)


def command_of(call: ToolCall) -> str | tuple[str, str]:
    """The game command of a call, or (reason, message) when it is not one the game may get: one command of
    words (letters, digits, spaces, hyphens, apostrophes), so none can be chained after it (Inform runs
    "look. quit" and "look then undo" as two) or print the text TextWorld reads a win from ("*** The End ***"),
    and no meta command or TextWorld debug verb (``tw-...``)."""
    command = call.arg.strip()
    if not command:
        return "bad_command", "error: empty command"
    if len(command) > MAX_COMMAND_CHARS or not COMMAND_CHARS.fullmatch(command):
        return "bad_command", (f"error: a command is words only (letters, digits, spaces, - and '), at most "
                               f"{MAX_COMMAND_CHARS} characters")  # fmt: skip
    words = command.lower().split()
    if words[0] in META_COMMANDS or words[0].startswith("tw-") or "then" in words:
        return "meta_command", f"error: {echo(command)} is not one game command"
    return command


class TextWorldEnv:
    """One game as an episode; its reward is the share of the game's points for a task made ``dense``, else 1
    for a won game."""

    TOOLS: ClassVar = {TOOL: TOOL}  # tool -> its one string argument

    def __init__(self, task: Task) -> None:
        spec = _spec(task)
        self.game = load_game(int(spec["level"]), int(spec["seed"]))
        self.template, self.dense = bool(task.tools), bool(spec.get("dense"))
        self.env: Any = None

    def reset(self) -> str:
        import textworld

        if self.env is not None:
            self.env.close()
        self.env = textworld.start(str(self.game.path), request_infos=_infos())
        self.state = self.env.reset()
        self.turn, self.tool_calls, self.tool_errors = 0, 0, 0
        return self.game.intro

    def step(self, action: str) -> StepResult:
        if self.env is None:
            self.reset()
        assert self.env is not None
        self.turn += 1
        call = read_call(action, self.TOOLS)
        command = command_of(call) if isinstance(call, ToolCall) else (call.reason, call.message)
        if isinstance(command, tuple):
            self.tool_calls += command[0] != "no_tool_call"
            self.tool_errors += 1
            return self._answer(command[1], error=command[0], tool=None)
        self.tool_calls += 1
        self.state, _, done = self.env.step(command)
        feedback = str(self.state.feedback)
        feedback = " ".join(feedback.rpartition("\n>")[0].split() or feedback.split())  # not the status line
        observation = (
            f"{feedback}\nScore: {self.state.score}/{self.game.max_score}. Commands: {listing(self.state)}"
        )
        if done or self.state.won or self.state.lost:
            return self._end("won" if self.state.won else "lost")
        return self._answer(observation, error="", tool=TOOL)

    def reward(self) -> float:
        if self.state.won or not self.dense:
            return float(bool(self.state.won))
        left = len(self.state.policy_commands or ())
        return max(0.0, 1.0 - left / max(1, len(self.game.walkthrough)))

    def _info(self, error: str, tool: str | None) -> dict[str, Any]:
        return {"turn": self.turn, "tool": tool, "tool_error": bool(error), "error": error,
                "tool_calls": self.tool_calls, "tool_errors": self.tool_errors, "score": int(self.state.score)}  # fmt: skip

    def _answer(self, text: str, error: str, tool: str | None) -> StepResult:
        observation = text if self.template else f"\n<obs>{text}</obs>\n"
        return StepResult(observation, done=False, reward=self.reward(), info=self._info(error, tool))

    def _end(self, reason: str) -> StepResult:
        self.env.close()
        info = self._info("", TOOL) | {"reason": reason, "format_reward": 0.0}
        return StepResult("", done=True, reward=self.reward(), info=info)


def walkthrough(task: Task) -> tuple[str, ...]:
    """The winning commands of ``task``'s game (TextWorld's own policy)."""
    spec = _spec(task)
    return load_game(int(spec["level"]), int(spec["seed"])).walkthrough


def main(argv: list[str]) -> int:
    """``python -m specialists.text_games DIR LEVEL:SEED ...``: compile those games into DIR (``games`` runs this
    in each of its processes); the first failure is printed as one line, exit 1."""
    into = Path(argv[0])
    for pair in argv[1:]:
        level, seed = map(int, pair.split(":"))
        if error := _generate_one(level, seed, into):
            print(error, flush=True)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
