"""Answer normalisation for the math reward: what a human grader ignores, removed before ``math-verify``.

Each function is pure (str -> str or a reading) and is applied to the reference exactly as to the answer,
so a relaxation can only make two strings compare equal when a grader would call them the same answer.
Decisions (hand-worked cases in tests/test_math_reward.py):

- Separators: ``1\\,000``, ``1{,}000``, ``1\\!000``, ``10,\\!080`` are 1000 / 10080; ``1,0001`` stays as
  written (not a thousands group), which math-verify does not read as 10001.
- Units, currency and percent are annotations: ``5 cm``, ``5\\text{ cm}``, ``\\$5``, ``5 dollars``, ``5 USD``,
  ``27\\%``, ``27 percent``, ``90^\\circ``, ``9 (apples)`` are the bare number. So ``0.27`` is *not* ``27\\%``
  (the MATH grader strips ``\\%`` too): accepting both would give the policy two targets for one question.
- ``\\text{27}`` is 27; a text-only answer (``\\text{Evelyn}``, ``\\text{(C)}``) is compared as a word, never as a
  product of one-letter symbols (math-verify reads ``lynEve`` as E*e*l*n*v*y, an anagram of the name).
- Clock times and ratios are compared as readings, never as fractions (math-verify reads ``6:25`` as 6/25,
  equal to ``12:50``): ``3:30 p.m.`` = ``3:30 PM`` = ``3:30pm`` = ``15:30``; a reading without a.m./p.m.
  matches either the 12-hour or 24-hour form of one with it; ratios ``a:b`` match exactly (``6:2`` != ``3:1``).
- Left to math-verify as it decides: ``x=5`` = ``5`` both ways (``y=5`` != ``x=5``); ``1 \\pm \\sqrt{19}`` is the
  pair, so one root alone is wrong and ``\\pm 4`` is not 4; a set, list, interval or inequality is never the
  single value it contains; ``0.333333`` = ``\\frac13`` (6 decimal places). Two plain decimals or two exact
  rationals must be equal exactly, though (``rewards.math_worker.compare``).
- One final answer only (``form_problem``): ``3 \\vee 4``, ``x = 3 = 4``, ``3 \\text{ (or } 4)`` are malformed,
  as math-verify would read each as one of its values; of several boxes the last counts, as before.
"""

from __future__ import annotations

import re
from decimal import Decimal

# Commands a grader reads as math in a final answer: those of the MATH / MATH-500 references, and the
# usual spellings of the same things. Anything else (\vee, \lor, \approx, \to, \mid, \sim, ...) is a way to
# write two answers in one box whose parse keeps only one of them (math-verify reads ``3 \vee 4`` as 4).
_ALLOWED_COMMAND_NAMES = """
    frac dfrac tfrac cfrac sqrt pi text textbf textrm textit mbox mathrm mathbf operatorname circ begin end
    infty left right cup cap pm mp in notin cos sin tan cot sec csc arcsin arccos arctan log ln exp overline
    cdot times div le ge leq geq lt gt neq ne emptyset varnothing mathbb displaystyle alpha beta gamma delta
    epsilon varepsilon zeta eta theta vartheta iota kappa lambda mu nu xi rho sigma tau upsilon phi varphi
    chi psi omega Gamma Delta Theta Lambda Xi Pi Sigma Phi Psi Omega binom dbinom prime lfloor rfloor lceil
    rceil angle triangle degree
"""
ALLOWED_COMMANDS = frozenset(_ALLOWED_COMMAND_NAMES.split())
_UNIT_NAMES = """
    cm m km mm meter meters metre metres inch inches in ft foot feet yard yards yd mile miles units unit
    degree degrees cent cents dollar dollars usd hour hours hr hrs minute minutes min mins second seconds
    sec secs day days week weeks month months year years gram grams g kg kilograms pound pounds lb lbs
    ounce ounces oz liter liters litre litres l ml gallon gallons mph square sq cubic percent
"""
UNITS = frozenset(_UNIT_NAMES.split())  # bare words dropped after a plain number (compared lowercase)
MAX_ANSWER_CHARS = 400  # the longest MATH reference is 81 characters; longer boxes are rejected unread
MAX_OPERAND = 10_000  # exponents / factorials / binomials past this can take sympy minutes (9^{99999999})

_TEXT_CMD = r"\\(?:text|textbf|textrm|textit|mbox|mathrm)"
_TEXT_RE = re.compile(_TEXT_CMD + r"\s*\{([^{}]*)\}")
_THOUSANDS_GAP_RE = re.compile(r"(?<=\d)(,?)\s*(?:\\[,:; ]|~)\s*(?=\d{3}(?!\d))")
_PERCENT_RE = re.compile(r"\\?%")
_DEGREE_RE = re.compile(r"\^\s*\{?\s*\\circ\s*\}?|\\circ|\\degree|°")
# An annotation that joins words with a connective ("4 \text{ or three}") is a second answer, not a unit.
_NO_CONNECTIVE = r"(?![^{}()]*\b(?i:or|and|not|nor|either)\b)"
_CONNECTIVE_RE = re.compile(r"\s*,?\s*\b(?i:or|and|not|nor|either)\b\s*")
_ANNOTATION_RE = re.compile(r"(?<=[\d}])\s*\(\s*" + _NO_CONNECTIVE + r"[A-Za-z][A-Za-z ]*\)\s*$")
_TRAILING_TEXT_RE = re.compile(
    r"(?<=[\w}.)])\s*"
    + _TEXT_CMD
    + r"\s*\{\s*"
    + _NO_CONNECTIVE
    + r"[A-Za-z][A-Za-z ./]*\}\s*(?:\^\s*\{?\d\}?)?\s*$"
)
_TRAILING_WORDS_RE = re.compile(r"((?:[A-Za-z]+\.?\s+)*[A-Za-z]+\.?)\s*(?:\^\s*\{?\d\}?)?\s*$")
_DECIMAL_RE = re.compile(r"[-+]?(?:\d{1,3}(?:,\d{3})+|\d+)?(?:\.\d+)?(?<=\d)")
_PLAIN_NUMBER_RE = re.compile(r"-?(?:\d[\d,]*(?:\.\d*)?|\.\d+)")
_LAST_TOKEN_RE = re.compile(r"(?:\\[A-Za-z]+|\w*)$")
_FIRST_TOKEN_RE = re.compile(r"^(?:\\[A-Za-z]+|\d+|.?)", re.DOTALL)
_POWER_CHAIN_RE = re.compile(r"\^\s*(?:\{[^{}]*\}|\\[A-Za-z]+|\w)\s*\^")  # 9^9^9
# Two numbers kept apart only by a space or an empty group: math-verify reads ``4~3`` and ``4{}3`` as 4.
_SIDE_BY_SIDE_RE = re.compile(r"\d\s*(?:~|\\[,:; ]|\{\s*\})\s*\d")
_COMMAND_RE = re.compile(r"\\([A-Za-z]+)")
_FRAC_RE = re.compile(r"\\[dtc]?frac(?![A-Za-z])|\\sqrt(?![A-Za-z])")
_CLOCK_RE = re.compile(r"(\d{1,2}):(\d{2})\s*(?:([ap])\.?\s*m\.?)?", re.IGNORECASE)
_RATIO_RE = re.compile(r"\d+(?:\s*:\s*\d+)+")
_WORD_RE = re.compile(r"\(?\s*[A-Za-z][A-Za-z ]*\)?\.?")


def join_thousands(latex: str) -> str:
    """``1\\,000`` / ``1{,}000`` / ``1\\!000`` / ``10,\\!080`` -> ``1000`` / ``1,000`` / ``1000`` / ``10,080``.

    A thin space (``\\,``, ``\\:``, ``\\;``, ``\\ ``, ``~``) is a separator only when exactly three digits follow,
    so ``3\\,4`` stays two tokens; ``\\!`` (negative space) is pure kerning and always goes.
    """
    latex = re.sub(r"\s*\\!\s*", "", latex.replace("{,}", ","))
    return _THOUSANDS_GAP_RE.sub(lambda m: m.group(1), latex)


def _group_end(latex: str, start: int) -> int:
    """Index just past the brace group opening at ``latex[start] == "{"`` (the string's end if it never closes)."""
    depth = 0
    for i in range(start, len(latex)):
        depth += {"{": 1, "}": -1}.get(latex[i], 0)
        if depth == 0:
            return i + 1
    return len(latex)


def brace_command_args(latex: str) -> str:
    """``\\frac \\pi4`` -> ``\\frac{\\pi}{4}``, ``\\sqrt2`` -> ``\\sqrt{2}``: unbraced arguments braced.

    math-verify mis-reads an unbraced command argument (``\\frac \\pi4 + 2 - \\sqrt2`` parses as 2, so any
    answer equal to 2 would match that reference); braced, it reads the whole expression.
    """
    out, i = [], 0
    for m in _FRAC_RE.finditer(latex):
        if m.start() < i:  # inside an argument already handled (recursively)
            continue
        out.append(latex[i : m.end()])
        i = m.end()
        for _ in range(2 if "frac" in m.group() else 1):
            j = i
            while j < len(latex) and latex[j] == " ":
                j += 1
            if j >= len(latex) or latex[j] == "[":
                break
            if latex[j] == "{":
                end = _group_end(latex, j)
                closed = latex[end - 1] == "}" and end - 1 > j
                inner = brace_command_args(latex[j + 1 : end - 1]) + "}" if closed else latex[j + 1 : end]
                out.append(latex[i : j + 1] + inner)
                i = end
                continue
            token = re.match(r"\\[A-Za-z]+|.", latex[j:], re.DOTALL)
            assert token is not None  # j < len(latex), so "." matches
            out.append("{" + token.group() + "}")
            i = j + len(token.group())
    out.append(latex[i:])
    return "".join(out)


def unwrap_numeric_text(latex: str) -> str:
    """``\\text{27}`` -> ``27``, ``\\text{5 dollars}`` -> ``5 dollars``: text holding a digit is read as math."""
    return _TEXT_RE.sub(lambda m: m.group(1) if re.search(r"\d", m.group(1)) else m.group(0), latex)


def drop_symbols(latex: str) -> str:
    """Currency, percent and degree signs removed: ``\\$5`` -> ``5``, ``27\\%`` -> ``27``, ``90^\\circ`` -> ``90``."""
    latex = latex.replace("\\$", "").replace("$", "")
    return _DEGREE_RE.sub("", _PERCENT_RE.sub("", latex))


def drop_trailing_units(latex: str) -> str:
    """Trailing units and annotations removed: ``5 cm``, ``864 \\mbox{ inches}^2``, ``9 (apples)`` -> the number.

    Words in ``\\text{}``/``\\mbox{}`` or in parentheses after a value are an annotation whatever they say; a
    bare word only when it is a known unit (``UNITS``) after a plain number, since a bare letter after an
    expression is a variable (``a+5m``).
    """
    while True:
        stripped = _TRAILING_TEXT_RE.sub("", _ANNOTATION_RE.sub("", latex)).strip()
        words = _TRAILING_WORDS_RE.search(stripped)
        if (
            words
            and all(w.rstrip(".").lower() in UNITS for w in words.group(1).split())
            and _PLAIN_NUMBER_RE.fullmatch(stripped[: words.start()].strip())
        ):
            stripped = stripped[: words.start()].strip()
        if stripped == latex:
            return latex
        latex = stripped


def normalize(latex: str) -> str:
    """The grader's reading of one boxed answer or reference (the module doc lists what goes)."""
    latex = unwrap_numeric_text(join_thousands(latex.strip()))
    latex = drop_trailing_units(drop_symbols(latex))
    return " ".join(brace_command_args(latex).split())


def text_reading(latex: str) -> str | None:
    """A text-only answer as lowercase words (``\\text{(C)}``, ``(C)``, ``C`` -> ``c``; ``\\text{Evelyn}`` -> ``evelyn``).

    None when anything but letters and spaces (in ``\\text{}`` or bare, optionally in parentheses, with a
    final period) is there: a digit, an operator or another command makes it math.
    """
    inner = _TEXT_RE.sub(lambda m: m.group(1), latex).strip()
    if not _WORD_RE.fullmatch(inner):
        return None
    return " ".join(inner.rstrip(".").strip("() ").lower().split())


def is_text_answer(latex: str) -> bool:
    """A reference written as words in ``\\text{}`` (``\\text{east}``), which is then compared as words only."""
    return bool(re.search(_TEXT_CMD, latex)) and text_reading(latex) is not None


def clock_reading(latex: str) -> tuple[int, int, str] | None:
    """``3:30 p.m.`` -> (3, 30, "p"), ``15:30`` -> (15, 30, ""): hours, minutes and a/p when it is a clock time."""
    match = _CLOCK_RE.fullmatch(_TEXT_RE.sub(lambda m: m.group(1), latex).strip())
    if match is None:
        return None
    return int(match.group(1)), int(match.group(2)), (match.group(3) or "").lower()


def clock_minutes(hours: int, minutes: int, meridiem: str) -> set[int]:
    """Minutes after midnight the reading can mean: one with a.m./p.m., the 12- and 24-hour ones without."""
    if meridiem:
        return {(hours % 12 + (12 if meridiem == "p" else 0)) * 60 + minutes}
    return {hours * 60 + minutes, (hours % 12 + 12) * 60 + minutes}


def clocks_match(reference: tuple[int, int, str], answer: tuple[int, int, str]) -> bool:
    """Same time of day: both with a.m./p.m. exactly; otherwise the answer's reading is one the reference can mean."""
    if reference[2] and answer[2]:
        return clock_minutes(*reference) == clock_minutes(*answer)
    return bool(clock_minutes(*reference) & clock_minutes(*answer))


def ratio_reading(latex: str) -> tuple[int, ...] | None:
    """``3:1`` -> (3, 1): the integers of a colon-separated ratio, compared exactly (``6:2`` is not ``3:1``)."""
    latex = latex.strip()
    if not _RATIO_RE.fullmatch(latex):
        return None
    return tuple(int(part) for part in latex.split(":"))


def decimal_reading(latex: str) -> Decimal | None:
    """``-1,234.50`` -> Decimal("-1234.50"): a plain decimal number, compared exactly (``27.0`` = ``27``).

    math-verify rounds floats to 6 decimal places, which makes ``.0000672`` equal ``.0000673``; two plain
    numbers need no tolerance. (``0.333333`` against ``\\frac{1}{3}`` still goes to math-verify.)
    """
    latex = latex.strip()
    if not _DECIMAL_RE.fullmatch(latex):
        return None
    return Decimal(latex.replace(",", ""))


def form_problem(latex: str) -> str | None:
    """Why a normalised answer is not one final answer a grader would accept, or None if it is.

    Rejected: a command outside ``ALLOWED_COMMANDS`` (``3 \\vee 4``), ``\\text{}`` holding more than words
    (``3 \\text{ (or } 4)``, read as 4) or words with a connective (``4 \\text{ or three}``; a lone
    ``\\text{ and }`` between values is a list, which math-verify reads as one), a chain of equations (``x = 3 = 4``, read as its last value), an
    equation whose left side is a number (``3 = 4``, read as 4), a lone ``|`` (``3 | 4``), ``&`` or ``\\\\``
    outside a matrix, an environment other than a matrix (``\\begin{cases} 3 \\\\ 4``, read as 4), and two
    numbers side by side (``4~3``, ``4{}3``, read as 4).
    """
    unknown = sorted({c for c in _COMMAND_RE.findall(latex) if c not in ALLOWED_COMMANDS})
    if unknown:
        return f"uses \\{unknown[0]}"
    texts = _TEXT_RE.findall(latex) + re.findall(r"\(([A-Za-z ]*)\)", latex)
    if any(not re.fullmatch(r"[A-Za-z ,.]*", words) for words in texts):
        return "\\text{} holding more than words"
    if any(_CONNECTIVE_RE.search(words) and not _CONNECTIVE_RE.fullmatch(words) for words in texts):
        return "words joined to the answer by a connective"
    if _SIDE_BY_SIDE_RE.search(latex):
        return "two numbers side by side"
    if re.search(r"\\begin\s*\{(?!\s*[pbvBV]?matrix\s*\}|\s*array\s*\})", latex):
        return "an environment that is not a matrix"
    if latex.count("=") > 1:
        return "more than one '='"
    if "=" in latex and not re.search(r"[A-Za-z]", latex.split("=", 1)[0]):
        return "an equation whose left side is a number"
    if latex.replace("\\|", "").count("|") % 2:
        return "an unpaired '|'"
    if ("&" in latex or "\\\\" in latex) and "\\begin" not in latex:
        return "'&' or '\\\\' outside a matrix"
    return None


def _powers(latex: str) -> list[tuple[str, str]]:
    """(base, exponent) text of each ``^``: the brace/paren group or the single token on either side."""
    pairs = []
    for k in (i for i, c in enumerate(latex) if c == "^"):
        before = latex[:k].rstrip()
        if before.endswith(("}", ")", "]")):
            base = before[_group_start(before) :]
        else:
            base = _LAST_TOKEN_RE.findall(before)[0]  # the pattern matches at the end of any string
        after = latex[k + 1 :].lstrip()
        if after.startswith("{"):
            exponent = after[: _group_end(after, 0)]
        else:
            exponent = _FIRST_TOKEN_RE.findall(after)[0]  # the pattern matches at the start of any string
        pairs.append((base, exponent))
    return pairs


def _group_start(text: str) -> int:
    """Index of the bracket that opens the group closing at ``text``'s last character (0 if none does)."""
    depth = 0
    for i in range(len(text) - 1, -1, -1):
        depth += {"}": 1, ")": 1, "]": 1, "{": -1, "(": -1, "[": -1}.get(text[i], 0)
        if depth == 0:
            return i
    return 0


def _factorial_problem(before: str) -> str | None:
    """Why the factorial whose operand ends ``before`` could be huge: a number past ``MAX_OPERAND``, or a
    bracketed group without a variable (``(10^{100})!``, ``(9!)!``); ``n!`` and ``(n+1)!`` stay symbolic."""
    if number := re.search(r"\d+$", before):
        return f"a factorial over {MAX_OPERAND}" if int(number.group()) > MAX_OPERAND else None
    if before.endswith(("}", ")", "]")):
        group = _COMMAND_RE.sub("", before[_group_start(before) :])
        return None if re.search(r"[A-Za-z]", group) else "a factorial of an expression"
    return None if re.search(r"[A-Za-z]$", before) else "a factorial of an expression"


def complexity_problem(latex: str) -> str | None:
    """Why sympy could run unboundedly long on this answer (math-verify's only bound is a main-thread alarm,
    and a big-integer power cannot be interrupted at all), or None.

    Rejected: more than ``MAX_ANSWER_CHARS`` characters; a power of a power (``9^{9^{9}}``, ``(9^9)^9``);
    an exponent, factorial or binomial over ``MAX_OPERAND``; a factorial of an expression (``(10^{100})!``).
    """
    if len(latex) > MAX_ANSWER_CHARS:
        return f"longer than {MAX_ANSWER_CHARS} characters"
    for base, exponent in _powers(latex):
        if "^" in base or "^" in exponent or "!" in exponent:
            return "a power of a power"
        if any(int(n) > MAX_OPERAND for n in re.findall(r"\d+", exponent)):
            return f"an exponent over {MAX_OPERAND}"
    if _POWER_CHAIN_RE.search(latex):
        return "a power of a power"
    for bang in (i for i, c in enumerate(latex) if c == "!"):
        if problem := _factorial_problem(latex[:bang].rstrip()):
            return problem
    for binom in re.finditer(r"\\d?binom", latex):
        if any(int(n) > MAX_OPERAND for n in re.findall(r"\d+", latex[binom.end() : binom.end() + 40])):
            return f"a binomial over {MAX_OPERAND}"
    return None
