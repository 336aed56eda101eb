"""Split a code task's trusted tests into what the sandbox evaluates and what the trusted judge decides.

Every maximal sub-expression of a test that involves the program (a name the tests do not define themselves,
e.g. ``f(5)`` in ``assert f(5) == 120``, or ``s.pop()`` after a setup ``s = Stack()``) is a *value request*. The
sandbox runs the program, the statements that involve the program, and the requests, in order, and reports each
requested value as plain data (``rewards/plain.py``). The judge runs the rest -- the asserts with the reported
values put in place of the requests, and the statements that only concern the tests -- in a process where no
candidate code exists. What the tests expect never enters the sandbox, so no object of the program ever sees
an expected value (no ``__eq__`` to fake), and the program can at most choose the values it reports.

Which names involve the program (*tainted*) is a fixpoint: names the tests read but never bind (and that are
neither built-ins nor standard modules), the task's ``entry_point``, and every name bound by a statement that
involves the program (``s = Stack()``, ``candidate = f``, the target of a loop over a program value). The judge
asks the sandbox for those. A name the tests bind themselves and the sandbox needs (an input ``x = [3, 1]``,
a loop variable over ``range(3)``) is *needed*: its statements run on both sides and the judge uses its own
value, so a forged report cannot change the tests' inputs. Modules the tests import or use by name, and
functions/classes the tests define without touching the program, exist on both sides and are never tainted.
The program's callables and the attributes of objects the tests hold by name run in the sandbox (``f(x)``,
``s.pop()``); a method, attribute or index of a value a call returned is the judge's (``f(x).strip()``,
``f(x)[0]``), on the plain value.

Supported control flow: ``for`` loops (over a program value, the judge runs as many rounds as the sandbox
reports; over the tests' own iterable, both sides iterate it themselves) and statements that do not involve the
program at all (run by the judge only). An ``if``/``while``/``with``/``try`` that involves the program, or a
request inside a lambda or comprehension, is refused with ValueError: neither MBPP, sanitized MBPP nor the
HumanEval format needs them. A HumanEval ``check(candidate)`` is inlined: its parameter becomes a name bound to
``entry_point`` and its statements become top-level tests. Requests of one statement are all evaluated, in
source order, before the judge evaluates the statement (where Python would short-circuit, the sandbox still
evaluates them). A test value the program changes in place is seen changed by the sandbox only.
"""

from __future__ import annotations

import ast
import builtins
import functools
import sys
import warnings
from dataclasses import dataclass, field

_BUILTINS = frozenset(dir(builtins))
_SCOPES = (ast.Lambda, ast.GeneratorExp, ast.ListComp, ast.SetComp, ast.DictComp)
_NO_REQUESTS = (ast.NamedExpr, ast.Await, ast.Yield, ast.YieldFrom)
_DEFS = (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)
_LABEL_CHARS = 120


@dataclass(frozen=True)
class SplitTests:
    """One task's tests, split. Unit 0 is the setup; units 1.. each end with a top-level assert (or loop)."""

    sandbox_units: tuple[str, ...]  # source run in the sandbox's test namespace, per unit
    judge_units: tuple[str, ...]  # source run by the judge, per unit
    labels: tuple[str, ...]  # per test unit (not the setup): its last original statement, shortened
    modules: tuple[str, ...]  # modules the tests import or use by name (the sandbox snapshots them)
    implicit_modules: tuple[str, ...]  # standard modules used by name without an import: bound on both sides


def _parse(source: str) -> ast.Module:
    with warnings.catch_warnings():  # dataset tests have invalid escapes ("\d" in non-raw strings)
        warnings.simplefilter("ignore", (SyntaxWarning, DeprecationWarning))
        return ast.parse(source)


def _loads(node: ast.AST) -> set[str]:
    return {n.id for n in ast.walk(node) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Load)}


def _binds(node: ast.AST) -> set[str]:
    """Every name bound anywhere inside ``node`` (assignments, defs, imports, parameters, handlers)."""
    names = set()
    for n in ast.walk(node):
        if isinstance(n, ast.Name) and not isinstance(n.ctx, ast.Load):
            names.add(n.id)
        elif isinstance(n, _DEFS):
            names.add(n.name)
        elif isinstance(n, (ast.Import, ast.ImportFrom)):
            names.update((a.asname or a.name).partition(".")[0] for a in n.names)
        elif isinstance(n, ast.arg):
            names.add(n.arg)
        elif isinstance(n, ast.ExceptHandler) and n.name:
            names.add(n.name)
    return names


def _mutated(stmt: ast.stmt) -> set[str]:
    """Names whose value a statement changes in place: ``root`` in ``root.left = x``, ``d`` in ``d[k] += 1``."""
    targets = getattr(stmt, "targets", None) or [getattr(stmt, "target", None)]
    names = set()
    for target in targets:
        if not isinstance(target, (ast.Attribute, ast.Subscript)):
            continue  # a plain rebinding (or no target), not a change in place
        while isinstance(target, (ast.Attribute, ast.Subscript)):
            target = target.value
        if isinstance(target, ast.Name):
            names.add(target.id)
    return names


def _free(node: ast.AST) -> set[str]:
    """Names ``node`` reads that it does not bind itself (a def's parameters and locals, a lambda's args)."""
    inner = _binds(node) if isinstance(node, (*_DEFS, *_SCOPES)) else set()
    for n in ast.walk(node):
        if n is not node and isinstance(n, (*_DEFS, *_SCOPES)):
            inner |= _binds(n)
    return _loads(node) - inner


def _inline_check(body: list[ast.stmt], entry_point: str | None) -> list[ast.stmt]:
    """HumanEval style: ``def check(candidate)`` and its statements become ``candidate = <entry_point>`` + them."""
    check = next((s for s in body if isinstance(s, ast.FunctionDef) and s.name == "check"), None)
    if check is None or entry_point is None:
        return body
    params = check.args.args
    if len(params) != 1 or check.args.vararg or check.args.kwonlyargs:
        raise ValueError("check() must take exactly one parameter, the candidate")
    if any(isinstance(n, ast.Return) for n in ast.walk(ast.Module(body=check.body, type_ignores=[]))):
        raise ValueError("check() returns early: not supported")
    calls_check = [
        s
        for s in body
        if isinstance(s, ast.Expr) and isinstance(s.value, ast.Call) and isinstance(s.value.func, ast.Name)
        if s.value.func.id == "check"
    ]
    rest = [s for s in body if s is not check and s not in calls_check]
    bind = ast.Assign(targets=[ast.Name(params[0].arg, ast.Store())], value=ast.Name(entry_point, ast.Load()))
    return [*rest, ast.fix_missing_locations(ast.copy_location(bind, check)), *check.body]


class _Requests(ast.NodeTransformer):
    """Replaces each maximal tainted sub-expression by ``_sbx_v(i)`` and collects it as request i."""

    def __init__(self, tainted: set[str]) -> None:
        self.tainted = tainted
        self.found: list[ast.expr] = []

    def involves(self, node: ast.AST) -> bool:
        return bool(_free(node) & self.tainted)

    def visit(self, node: ast.AST) -> ast.AST:
        if isinstance(node, ast.expr):
            if not self.involves(node):
                return node
            # The program's callables and the attributes of its named objects are evaluated in the sandbox;
            # a method, attribute or index of a value a call returned is the judge's, on the plain value
            # (so ``f(x).startswith("ab")`` never hands "ab" to the program's object).
            whole = (
                isinstance(node, ast.Name)
                or (isinstance(node, ast.Call) and self.involves(node.func) and _callee(node.func))
                or (
                    isinstance(node, (ast.Attribute, ast.Subscript))
                    and self.involves(node.value)
                    and _named(node.value)
                )
            )
            if whole:
                self.found.append(node)
                return _call("_sbx_v", ast.Constant(len(self.found) - 1))
            if isinstance(node, (*_SCOPES, *_NO_REQUESTS)):
                line = " ".join(ast.unparse(node).split())[:_LABEL_CHARS]
                raise ValueError(f"unsupported test: the program is used inside `{line}`")
        return self.generic_visit(node)


@dataclass
class _Split:
    """The fixpoint's state, then the code generator."""

    tainted: set[str]  # bound by the program or by statements that involve it: the judge asks the sandbox
    pinned: set[str]  # module names and the tests' own functions/classes: on both sides, never tainted
    needed: set[str] = field(default_factory=set)  # trusted names the sandbox reads: computed on both sides
    changed: bool = False
    site: int = 0

    def taint(self, names: set[str]) -> None:
        new = names - self.pinned - _BUILTINS - self.tainted
        if new:
            self.tainted |= new
            self.changed = True

    def need(self, names: set[str]) -> None:
        new = names - self.tainted - _BUILTINS - self.needed
        if new:
            self.needed |= new
            self.changed = True

    def involves(self, node: ast.AST) -> bool:
        return bool(_free(node) & self.tainted)

    def sandbox_only(self, stmt: ast.stmt) -> bool:
        return self.involves(stmt) or bool(_binds(stmt) & self.tainted)

    # ------------------------------------------------------------------------------------- the fixpoint

    def scan(self, body: list[ast.stmt]) -> bool:
        """One pass over ``body``, updating the taint; True if the sandbox must run anything in it."""
        runs = False
        for stmt in body:
            runs |= self.scan_one(stmt)
        return runs

    def scan_one(self, stmt: ast.stmt) -> bool:
        if isinstance(stmt, (ast.Import, ast.ImportFrom, ast.Break, ast.Continue, ast.Pass)):
            return False
        if isinstance(stmt, _DEFS):
            if not self.involves(stmt):
                return False
            if any(isinstance(n, ast.Assert) for n in ast.walk(stmt)):
                raise ValueError(f"unsupported test: `{stmt.name}` asserts on the program inside a def")
            self.pinned.discard(stmt.name)
            self.taint({stmt.name})
            self.need(_free(stmt))
            return True
        if isinstance(stmt, ast.Assert):
            requests = _Requests(self.tainted)
            requests.visit(_copy(stmt.test))
            for request in requests.found:
                self.need(_free(request))
            return bool(requests.found)
        if isinstance(stmt, ast.For):
            if self.involves(stmt.iter):  # iterating over the program's value: its items are the program's
                self.taint(_binds(stmt.target))
                self.need(_free(stmt.iter))
                self.scan(stmt.body)
                self.scan(stmt.orelse)
                return True
            inner = self.scan(stmt.body) | self.scan(stmt.orelse)
            if inner or _binds(stmt.target) & self.needed:
                self.need(_free(stmt.iter) | _binds(stmt.target))
                return True
            return False
        if isinstance(stmt, (ast.Expr, ast.Assign, ast.AugAssign, ast.AnnAssign, ast.Delete, ast.Raise)):
            if self.sandbox_only(stmt):
                self.taint(_binds(stmt))
                self.need(_free(stmt))
                return True
            if isinstance(stmt, ast.Expr) or (_binds(stmt) | _mutated(stmt)) & self.needed:
                self.need(_free(stmt))
                return True
            return False
        if (
            self.sandbox_only(stmt)
            or _binds(stmt) & self.needed
            or any(self.scan_one(s) for s in _children(stmt))
        ):
            line = " ".join(ast.unparse(stmt).split("\n")[0].split())[:_LABEL_CHARS]
            raise ValueError(f"unsupported test: `{line}` involves the program in a {type(stmt).__name__}")
        return False

    # --------------------------------------------------------------------------------------- generation

    def generate(self, body: list[ast.stmt]) -> tuple[list[ast.stmt], list[ast.stmt]]:
        """(sandbox statements, judge statements) for ``body``, with the final taint."""
        sandbox: list[ast.stmt] = []
        judge: list[ast.stmt] = []
        for stmt in body:
            s, j = self.generate_one(stmt)
            sandbox += s
            judge += j
        return sandbox, judge

    def generate_one(self, stmt: ast.stmt) -> tuple[list[ast.stmt], list[ast.stmt]]:
        if isinstance(stmt, (ast.Import, ast.ImportFrom, ast.Break, ast.Continue, ast.Pass)):
            return [stmt], [stmt]
        if isinstance(stmt, _DEFS):
            return ([stmt], []) if stmt.name in self.tainted else ([stmt], [stmt])
        if isinstance(stmt, ast.Assert):
            return self.split_assert(stmt)
        if isinstance(stmt, ast.For):
            return self.split_for(stmt)
        if isinstance(stmt, (ast.Expr, ast.Assign, ast.AugAssign, ast.AnnAssign, ast.Delete, ast.Raise)):
            if self.sandbox_only(stmt):
                return [stmt], []
            if isinstance(stmt, ast.Expr) or (_binds(stmt) | _mutated(stmt)) & self.needed:
                return [stmt], [
                    stmt
                ]  # trusted: both sides compute it (a print, a value the program is given)
        return [], [stmt]

    def split_for(self, stmt: ast.For) -> tuple[list[ast.stmt], list[ast.stmt]]:
        """A loop over the program's value: the judge runs as many rounds as the sandbox reports; over a
        trusted iterable: both sides iterate it themselves (the sandbox cannot change the judge's count)."""
        if not self.involves(stmt.iter) and not self.scan_one(stmt):
            return [], [stmt]
        site = self.next_site() if self.involves(stmt.iter) else 0
        body_s, body_j = self.generate(stmt.body)
        else_s, else_j = self.generate(stmt.orelse)
        iter_s, iter_j, target_j = stmt.iter, stmt.iter, stmt.target
        if site:
            iter_s = _call("_sbx_loop", ast.Constant(site), stmt.iter)
            iter_j, target_j = _call("_sbx_loop", ast.Constant(site)), ast.Name("_sbx_i", ast.Store())
        loop_s = ast.For(target=stmt.target, iter=iter_s, body=body_s or [ast.Pass()], orelse=else_s)
        loop_j = ast.For(target=target_j, iter=iter_j, body=body_j or [ast.Pass()], orelse=else_j)
        return [loop_s], [loop_j]

    def split_assert(self, stmt: ast.Assert) -> tuple[list[ast.stmt], list[ast.stmt]]:
        requests = _Requests(self.tainted)
        test = requests.visit(_copy(stmt.test))
        assert isinstance(test, ast.expr)
        msg = stmt.msg if stmt.msg is not None and not self.involves(stmt.msg) else None
        checked = ast.Assert(test=test, msg=msg)
        if not requests.found:
            return [], [checked]
        site = self.next_site()
        thunks = [ast.Lambda(args=_NO_ARGS, body=r) for r in requests.found]
        row = ast.Expr(_call("_sbx_row", ast.Constant(site), *thunks))
        return [row], [ast.Expr(_call("_sbx_next", ast.Constant(site))), checked]

    def next_site(self) -> int:
        self.site += 1
        return self.site


_NO_ARGS = ast.arguments(
    posonlyargs=[], args=[], vararg=None, kwonlyargs=[], kw_defaults=[], kwarg=None, defaults=[]
)


def _named(node: ast.expr) -> bool:
    """``a``, ``a.b``, ``a[k].b``: attributes and items down to a name, no call on the way."""
    while isinstance(node, (ast.Attribute, ast.Subscript)):
        node = node.value
    return isinstance(node, ast.Name)


def _callee(func: ast.expr) -> bool:
    """A callee the sandbox calls: a named one (``f``, ``s.pop``) or what a call to one returns (``f(1)(2)``)."""
    while isinstance(func, ast.Call):
        func = func.func
    return _named(func)


def _copy(node: ast.expr) -> ast.expr:
    """A deep copy to rewrite (NodeTransformer edits in place; the original is still needed for labels)."""
    return ast.parse(ast.unparse(node), mode="eval").body


def _call(name: str, *args: ast.expr) -> ast.Call:
    return ast.Call(func=ast.Name(name, ast.Load()), args=list(args), keywords=[])


def _children(stmt: ast.stmt) -> list[ast.stmt]:
    return [n for n in ast.walk(stmt) if isinstance(n, ast.stmt) and n is not stmt]


def _units(body: list[ast.stmt]) -> list[list[ast.stmt]]:
    """Consecutive statements, each group closed by a top-level statement holding an assert (or the last)."""
    groups: list[list[ast.stmt]] = [[]]
    for stmt in body:
        groups[-1].append(stmt)
        if any(isinstance(n, ast.Assert) for n in ast.walk(stmt)) or stmt is body[-1]:
            groups.append([])
    return [g for g in groups if g]


def _source(stmts: list[ast.stmt]) -> str:
    return ast.unparse(ast.fix_missing_locations(ast.Module(body=stmts, type_ignores=[])))


@functools.lru_cache(maxsize=4096)
def split_tests(test_code: str, setup: str, entry_point: str | None) -> SplitTests:
    """Split ``setup`` + ``test_code``; ValueError for tests that do not parse or use unsupported constructs."""
    if entry_point is not None and not entry_point.isidentifier():
        raise ValueError(f"entry_point must be an identifier, got {entry_point!r}")
    try:
        tree, setup_tree = _parse(test_code), _parse(setup)
    except SyntaxError as e:
        raise ValueError(f"test code does not parse: {e}") from e
    body = _inline_check(tree.body, entry_point)
    if not any(isinstance(n, ast.Assert) for s in body for n in ast.walk(s)):
        raise ValueError("test code has no top-level assert, nor a check() function and an entry_point")
    everything = ast.Module(body=[*setup_tree.body, *body], type_ignores=[])
    bound = _binds(everything)
    loaded = _loads(everything)
    implicit = {n for n in loaded - bound if n in sys.stdlib_module_names and n != entry_point}
    imported = {
        (a.asname or a.name).partition(".")[0]
        for n in ast.walk(everything)
        if isinstance(n, (ast.Import, ast.ImportFrom))
        for a in n.names
    }
    trusted_defs = {s.name for s in ast.walk(everything) if isinstance(s, _DEFS)}
    tainted = loaded - bound - _BUILTINS - implicit
    if entry_point is not None:
        tainted.add(entry_point)
    state = _Split(tainted=tainted, pinned=imported | implicit | trusted_defs)
    state.changed = True
    while state.changed:
        state.changed = False
        state.scan(everything.body)
    units = [setup_tree.body, *_units(body)]
    pairs = [state.generate(u) for u in units]
    modules = sorted(implicit | {m for m in _import_modules(everything)})
    return SplitTests(
        sandbox_units=tuple(_source(s) for s, _ in pairs),
        judge_units=tuple(_source(j) for _, j in pairs),
        labels=tuple(" ".join(ast.unparse(u[-1]).split())[:_LABEL_CHARS] for u in units[1:]),
        modules=tuple(modules),
        implicit_modules=tuple(sorted(implicit)),
    )


def _import_modules(tree: ast.Module) -> set[str]:
    """Top-level package names of absolute imports."""
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(a.name.partition(".")[0] for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.partition(".")[0])
    return names
