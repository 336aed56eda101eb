"""Plain data: what a sandboxed program's values may be when they leave the sandbox, as tagged JSON.

``encode`` runs inside the sandbox (``sandbox_harness.py`` executes this file's source before any candidate code,
so the type objects it compares against are the real ones); ``decode`` runs in the trusted judge
(``judge.py``). Only exact built-in types (and the collections types the tests compare against) are data;
anything else -- a subclass, an object with its own ``__eq__``, a class, a function -- is *opaque*: its type name
and truth value only. In the judge an ``Opaque`` refuses every comparison, arithmetic, container or attribute
operation with an AssertionError, so the test fails as a wrong answer. Every value is an array whose first item
is a tag:

======  ==========================================  ======  =====================================
``n``   None                                        ``l``   list: [items]
``b``   bool: [true|false]                          ``t``   tuple: [items]
``i``   int: [hex string] (no digit limit)          ``S``   set, ``F`` frozenset: [items]
``f``   float: [repr] (``inf``, ``nan`` included)   ``d``   dict: [[key, value], ...]
``c``   complex: [repr(real), repr(imag)]           ``C``   Counter, ``O`` OrderedDict, ``D`` defaultdict
``s``   str: [text]                                 ``Q``   deque: [items, maxlen or null]
``y``   bytes, ``Y`` bytearray: [hex]               ``r``   range: [start, stop, step] as ``i`` values
``it``  an iterator or generator, consumed: [items] ``K``/``V``/``I`` dict keys / values / items views
``o``   opaque: [type name, truth: true|false|null]
======  ==========================================  ======  =====================================

Bounds: ``MAX_DEPTH`` nesting levels and ``MAX_NODES`` values per encoded value (``TooBig`` past either); the
sandbox caps the whole channel in bytes.
"""

from __future__ import annotations

import _json  # the C codec: neither a candidate's patches of the json package nor its import cost
from collections import Counter, OrderedDict, defaultdict, deque
from itertools import islice

MAX_DEPTH = 64
MAX_NODES = 100_000
_NAME_CHARS = 100

_type_name = type.__dict__["__name__"].__get__  # past any metaclass __getattribute__
_ITERATORS = frozenset(
    [
        *(type(it) for it in (iter([]), iter(()), iter(range(0)), iter(""), iter(b""), iter(bytearray()))),
        *(type(it) for it in (iter({}), iter({}.values()), iter({}.items()), iter(set()), iter(deque()))),
        *(type(it) for it in (reversed([]), reversed({}), reversed(deque()), iter(range(1 << 70)))),
        *(type(it) for it in (map(int, []), filter(None, []), zip(), enumerate([]), (x for x in ()))),
        *(v for v in vars(__import__("itertools")).values() if isinstance(v, type)),
    ]
)
_VIEWS = {type({}.keys()): "K", type({}.values()): "V", type({}.items()): "I"}
_MAPPINGS = {dict: "d", OrderedDict: "O", defaultdict: "D", Counter: "C"}
_SEQUENCES = {list: "l", tuple: "t", set: "S", frozenset: "F"}


class TooBig(Exception):
    """A value nested deeper than MAX_DEPTH or with more than MAX_NODES parts."""


def encode(value, pristine=lambda cls: True) -> list:
    """``value`` as tagged JSON; ``pristine(Counter)`` False makes Counters opaque (their class was patched)."""
    return _Encoder(pristine).encode(value, 0)


class _Encoder:
    def __init__(self, pristine) -> None:
        self.pristine = pristine
        self.nodes = 0

    def encode(self, v, depth: int) -> list:
        self.nodes += 1
        if self.nodes > MAX_NODES or depth > MAX_DEPTH:
            raise TooBig(f"value has more than {MAX_NODES} parts or {MAX_DEPTH} levels")
        t = type(v)
        if v is None:
            return ["n"]
        if t is bool:
            return ["b", v]
        if t is int:
            return ["i", int.__format__(v, "#x")]
        if t is float:
            return ["f", float.__repr__(v)]
        if t is complex:
            return ["c", float.__repr__(v.real), float.__repr__(v.imag)]
        if t is str:
            return ["s", str.__str__(v)]
        if t is bytes or t is bytearray:
            return ["y" if t is bytes else "Y", bytes.hex(bytes(v))]
        if t in _SEQUENCES:  # a private copy first: a candidate thread could resize the original meanwhile
            return [_SEQUENCES[t], self.items(list(v) if t is not list else list.copy(v), depth)]
        if t in _MAPPINGS and (t is not Counter or self.pristine(Counter)):
            pairs = list(dict.items(v))
            return [_MAPPINGS[t], [[self.encode(k, depth + 1), self.encode(x, depth + 1)] for k, x in pairs]]
        if t is deque:
            return ["Q", self.items(list(v), depth), v.maxlen]
        if t is range:
            return ["r", *(["i", int.__format__(n, "#x")] for n in (v.start, v.stop, v.step))]
        if t in _VIEWS:
            return [_VIEWS[t], self.items(list(v), depth)]
        if t in _ITERATORS:
            items = list(islice(v, MAX_NODES - self.nodes + 1))
            return ["it", self.items(items, depth)]
        return self.opaque(v, t)

    def items(self, values: list, depth: int) -> list:
        return [self.encode(x, depth + 1) for x in values]

    @staticmethod
    def opaque(v, t: type) -> list:
        try:
            truth = bool(v)
        except Exception:
            truth = None
        return ["o", str(_type_name(t))[:_NAME_CHARS], truth]


def to_json(node) -> str:
    """Encoded values (lists of str, int, bool, None) as JSON text, ASCII only, through C functions alone."""
    parts: list[str] = []
    _write(node, parts)
    return "".join(parts)


def _write(node, parts: list[str]) -> None:
    t = type(node)
    if t is str:
        parts.append(_json.encode_basestring_ascii(node))
    elif t is list:
        parts.append("[")
        for i, item in enumerate(node):
            if i:
                parts.append(",")
            _write(item, parts)
        parts.append("]")
    elif t is bool or node is None:
        parts.append("true" if node is True else "false" if node is False else "null")
    elif t is int:
        parts.append(int.__repr__(node))
    else:
        raise TypeError(f"to_json: unexpected {t}")


class _ScanContext:
    """What ``_json.make_scanner`` reads; NaN/Infinity literals are not JSON here (parse_constant fails)."""

    strict = True
    object_hook = None
    object_pairs_hook = None
    parse_float = float
    parse_int = int
    parse_constant = None
    memo: dict = {}  # noqa: RUF012 (the scanner's cache, read as an attribute)


def from_json(text: str):
    """Parse JSON text (one value, nothing after it); ValueError if it is not."""
    try:
        value, end = _json.make_scanner(_ScanContext())(text, 0)  # type: ignore[arg-type]
    except StopIteration:
        raise ValueError("not JSON") from None
    except TypeError:
        raise ValueError("not JSON (a constant that is not JSON)") from None
    if text[end:].strip():
        raise ValueError("not JSON (text after the value)")
    return value


# ---------------------------------------------------------------------------------------------- judge side


class Opaque:
    """A value that was not plain data: it has a type name and a truth value, and nothing else works on it."""

    __slots__ = ("_name", "_truth")

    def __init__(self, name: str, truth: bool | None) -> None:
        self._name, self._truth = name, truth

    def _refuse(self, *args, **kwargs):
        raise AssertionError(f"untrusted value of type {self._name} in a test comparison")

    def __bool__(self) -> bool:
        if self._truth is None:
            self._refuse()
        return bool(self._truth)

    def __repr__(self) -> str:
        return f"<untrusted {self._name}>"

    __hash__ = object.__hash__
    __eq__ = __ne__ = __lt__ = __le__ = __gt__ = __ge__ = _refuse  # type: ignore[assignment]
    __len__ = __iter__ = __contains__ = __getitem__ = __call__ = __getattr__ = _refuse  # type: ignore[assignment]
    __index__ = __int__ = __float__ = __complex__ = __abs__ = __neg__ = __pos__ = __invert__ = _refuse
    __round__ = __trunc__ = __floor__ = __ceil__ = __format__ = _refuse  # type: ignore[assignment]
    __add__ = __radd__ = __sub__ = __rsub__ = __mul__ = __rmul__ = __matmul__ = __rmatmul__ = _refuse
    __truediv__ = __rtruediv__ = __floordiv__ = __rfloordiv__ = __mod__ = __rmod__ = _refuse
    __divmod__ = __rdivmod__ = __pow__ = __rpow__ = __lshift__ = __rlshift__ = __rshift__ = _refuse
    __rrshift__ = __and__ = __rand__ = __xor__ = __rxor__ = __or__ = __ror__ = _refuse


def decode(node, depth: int = 0):
    """Tagged JSON -> a value built from trusted types only; ValueError if ``node`` is not well formed."""
    if depth > MAX_DEPTH + 1 or type(node) is not list or not node or type(node[0]) is not str:
        raise ValueError("malformed value")
    tag, args = node[0], node[1:]
    if tag in _SCALARS and len(args) == _SCALARS[tag][0]:
        return _SCALARS[tag][1](*args)
    if tag in _BUILDERS and len(args) == 1 and type(args[0]) is list:
        items = [decode(x, depth + 1) for x in args[0]]
        return _BUILDERS[tag](items)
    if tag in _PAIRS and len(args) == 1 and type(args[0]) is list:
        pairs = [_pair(p, depth) for p in args[0]]
        return _PAIRS[tag](pairs)
    if tag == "Q" and len(args) == 2 and type(args[0]) is list and (args[1] is None or type(args[1]) is int):
        return deque([decode(x, depth + 1) for x in args[0]], args[1])
    if tag == "r" and len(args) == 3:
        return range(*(_int_node(x) for x in args))
    if tag == "o" and len(args) == 2 and type(args[0]) is str and args[1] in (True, False, None):
        return Opaque(args[0][:_NAME_CHARS], args[1])
    raise ValueError(f"malformed value (tag {tag[:8]!r})")


def _pair(pair, depth: int) -> tuple:
    if type(pair) is not list or len(pair) != 2:
        raise ValueError("malformed mapping entry")
    return decode(pair[0], depth + 1), decode(pair[1], depth + 1)


def _int_node(node) -> int:
    if type(node) is not list or len(node) != 2 or node[0] != "i":
        raise ValueError("malformed range bound")
    return _int(node[1])


def _int(text) -> int:
    if type(text) is not str:
        raise ValueError("malformed int")
    return int(text, 16)  # "-0x1f" too; linear time for any size


def _float(text) -> float:
    if type(text) is not str:
        raise ValueError("malformed float")
    return float(text)


def _str(text) -> str:
    if type(text) is not str:
        raise ValueError("malformed str")
    return text


def _bool(flag) -> bool:
    if type(flag) is not bool:
        raise ValueError("malformed bool")
    return flag


_SCALARS = {
    "n": (0, lambda: None),
    "b": (1, _bool),
    "i": (1, _int),
    "f": (1, _float),
    "c": (2, lambda re, im: complex(_float(re), _float(im))),
    "s": (1, _str),
    "y": (1, lambda text: bytes.fromhex(_str(text))),
    "Y": (1, lambda text: bytearray.fromhex(_str(text))),
}
_BUILDERS = {
    "l": list,
    "t": tuple,
    "S": set,
    "F": frozenset,
    "it": iter,
    "K": lambda items: dict.fromkeys(items).keys(),
    "V": lambda items: dict(enumerate(items)).values(),
    "I": lambda items: dict(items).items(),
}
_PAIRS = {
    "d": dict,
    "O": OrderedDict,
    "D": lambda pairs: defaultdict(None, pairs),
    "C": lambda pairs: Counter(dict(pairs)),  # Counter(pairs) would count the pairs
}
