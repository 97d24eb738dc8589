"""Job conditions: a small expression language, parsed by hand and evaluated without ``eval``.

A condition step in a job chooses a branch from the results of earlier steps::

    install.status == "failed" and not (install.return_code == 3 or install-again.return_code >= 10)

Grammar, loosest binding first (``or`` < ``and`` < ``not`` < comparison)::

    condition  := or_expr END
    or_expr    := and_expr ("or" and_expr)*
    and_expr   := not_expr ("and" not_expr)*
    not_expr   := "not" not_expr | "(" or_expr ")" | comparison
    comparison := operand OPERATOR operand
    operand    := STRING | INTEGER | REFERENCE
    OPERATOR   := "==" | "!=" | "<" | "<=" | ">" | ">=" | "contains"

A string is in single or double quotes, with the escapes ``\\\\ \\' \\" \\n``. An integer is
decimal, optionally negative (``-1``). A reference is ``<step>.<field>``: the step id may hold
hyphens (``install-again.status``), the field may not. A word directly followed by ``.`` is always
a reference, so a step may even be called ``not``. Keywords are lowercase. A bare operand is not a
condition: every condition compares.

Theory of operation: the text is cut into tokens on demand, one token ahead of the parser, so the
first error in reading order is the one reported. Anything the tokenizer cannot place becomes a
``BAD`` token, and the parser reports it with what it expected at that point, which is the most
useful message. Length and nesting are bounded (:data:`MAX_LENGTH`, :data:`MAX_DEPTH`) so that
neither the parser nor :func:`evaluate` can run out of stack. :func:`parse_condition` raises
:class:`ConditionError` and nothing else; :func:`evaluate` never raises.
"""

from __future__ import annotations

import operator
import string
from collections.abc import Mapping
from dataclasses import dataclass
from enum import Enum, StrEnum, auto
from typing import NoReturn, TypeAlias

from protocol.errors import TaskfleetError

MAX_LENGTH = 2000
"""Longest condition text, in characters. Keep it below 4300: ``int()`` refuses longer numbers."""

MAX_DEPTH = 50
"""Deepest nesting of parentheses and ``not``."""


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


class ConditionError(TaskfleetError):
    """A condition could not be parsed.

    ``position`` is the 0-based offset into ``text`` where the problem is, ``expected`` says what
    would have been valid there and ``found`` what was there instead (quoted, or "the end of the
    text").
    """

    def __init__(self, text: str, position: int, expected: str, found: str):
        self.text = text
        self.position = position
        self.expected = expected
        self.found = found
        super().__init__(
            f"condition {_clip(text, 80)!r} at position {position}: "
            f"expected {expected}, found {found}"
        )

    def __reduce__(self) -> tuple[type[ConditionError], tuple[str, int, str, str]]:
        return (type(self), (self.text, self.position, self.expected, self.found))


class Operator(StrEnum):
    """A comparison operator, spelled as in the condition text."""

    EQ = "=="
    NE = "!="
    LT = "<"
    LE = "<="
    GT = ">"
    GE = ">="
    CONTAINS = "contains"


@dataclass(frozen=True, slots=True)
class Literal:
    """A string or integer written in the condition."""

    value: str | int


@dataclass(frozen=True, slots=True)
class Ref:
    """``<step>.<field>``: a value from an earlier step's result."""

    step: str
    field: str


@dataclass(frozen=True, slots=True)
class Compare:
    """``left op right``."""

    op: Operator
    left: Operand
    right: Operand


@dataclass(frozen=True, slots=True)
class And:
    """True when every operand is true; two or more operands, evaluated left to right."""

    operands: tuple[Expr, ...]


@dataclass(frozen=True, slots=True)
class Or:
    """True when any operand is true; two or more operands, evaluated left to right."""

    operands: tuple[Expr, ...]


@dataclass(frozen=True, slots=True)
class Not:
    """True when its operand is false."""

    operand: Expr


Operand: TypeAlias = Literal | Ref
"""What a comparison compares."""

Expr: TypeAlias = Compare | And | Or | Not
"""A node that has a truth value; the root of every :class:`Condition`."""


@dataclass(frozen=True, slots=True)
class Condition:
    """A parsed condition: the text as written and its tree."""

    text: str
    root: Expr

    def references(self) -> frozenset[tuple[str, str]]:
        """Every ``(step, field)`` the condition reads, for checking against the job's steps."""
        found: set[tuple[str, str]] = set()
        stack: list[Expr] = [self.root]
        while stack:
            node = stack.pop()
            if isinstance(node, Compare):
                for side in (node.left, node.right):
                    if isinstance(side, Ref):
                        found.add((side.step, side.field))
            elif isinstance(node, And | Or):
                stack.extend(node.operands)
            else:
                stack.append(node.operand)
        return frozenset(found)

    def __str__(self) -> str:
        return self.text


# --- tokenizer -------------------------------------------------------------------------------


class _Kind(Enum):
    OPERAND = auto()
    OPERATOR = auto()
    AND = auto()
    OR = auto()
    NOT = auto()
    LPAREN = auto()
    RPAREN = auto()
    BAD = auto()
    END = auto()


@dataclass(frozen=True, slots=True)
class _Token:
    kind: _Kind
    text: str
    position: int
    operand: Operand | None = None
    operator: Operator | None = None


# Explicit ASCII sets: str.isdigit() and str.isalpha() accept far more than the language does.
_SPACE = frozenset(" \t\r\n")
_DIGITS = frozenset(string.digits)
_ID_START = frozenset(string.ascii_letters + "_")
_FIELD_CHARS = _ID_START | _DIGITS
_STEP_CHARS = _FIELD_CHARS | {"-"}
_NUMBER_TAIL = _FIELD_CHARS | {"."}
_ESCAPES = {"\\": "\\", "'": "'", '"': '"', "n": "\n"}
_KEYWORDS = {"and": _Kind.AND, "or": _Kind.OR, "not": _Kind.NOT}
_SYMBOLS = [(op.value, op) for op in Operator if op is not Operator.CONTAINS]
_SYMBOLS.sort(key=lambda pair: -len(pair[0]))  # "<=" before "<"

_END_TEXT = "the end of the text"
_TERM = "a string, a number, a reference like step.field, 'not' or '('"
_OPERAND = "a string, a number or a reference like step.field"
_OPERATOR = "an operator (==, !=, <, <=, >, >=, contains)"
_AFTER_TOP = "'and', 'or' or the end of the condition"
_AFTER_INNER = "'and', 'or' or ')'"


class _Parser:
    """Recursive descent over tokens read one ahead."""

    def __init__(self, text: str):
        self._text = text
        self._pos = 0
        self._peeked: _Token | None = None
        self._depth = 0

    # tokens

    def _fail_at(self, position: int, expected: str) -> NoReturn:
        found = repr(self._text[position]) if position < len(self._text) else _END_TEXT
        raise ConditionError(self._text, position, expected, found)

    def _fail(self, token: _Token, expected: str) -> NoReturn:
        found = _END_TEXT if token.kind is _Kind.END else repr(_clip(token.text, 40))
        raise ConditionError(self._text, token.position, expected, found)

    def _peek(self) -> _Token:
        if self._peeked is None:
            self._peeked = self._lex()
        return self._peeked

    def _take(self) -> _Token:
        token = self._peek()
        self._peeked = None
        return token

    def _lex(self) -> _Token:
        text, n = self._text, len(self._text)
        i = self._pos
        while i < n and text[i] in _SPACE:
            i += 1
        if i >= n:
            self._pos = n
            return _Token(_Kind.END, "", n)
        c = text[i]
        if c in "'\"":
            j, value = self._string(i)
            token = _Token(_Kind.OPERAND, text[i:j], i, operand=Literal(value))
        elif c in _DIGITS or (c == "-" and i + 1 < n and text[i + 1] in _DIGITS):
            j = i + 1
            while j < n and text[j] in _DIGITS:
                j += 1
            if j < n and text[j] in _NUMBER_TAIL:
                # "12abc" or "1.5": one bad token, so the message quotes all of it.
                while j < n and text[j] in _NUMBER_TAIL:
                    j += 1
                token = _Token(_Kind.BAD, text[i:j], i)
            else:
                token = _Token(_Kind.OPERAND, text[i:j], i, operand=Literal(int(text[i:j])))
        elif c in _ID_START:
            j = i + 1
            while j < n and text[j] in _STEP_CHARS:
                j += 1
            word = text[i:j]
            if j < n and text[j] == ".":
                k = j + 1
                if k >= n or text[k] not in _ID_START:
                    self._fail_at(k, f"a field name after {word + '.'!r}")
                j = k + 1
                while j < n and text[j] in _FIELD_CHARS:
                    j += 1
                token = _Token(_Kind.OPERAND, text[i:j], i, operand=Ref(word, text[k:j]))
            elif word == "contains":
                token = _Token(_Kind.OPERATOR, word, i, operator=Operator.CONTAINS)
            elif word in _KEYWORDS:
                token = _Token(_KEYWORDS[word], word, i)
            else:
                token = _Token(_Kind.BAD, word, i)
        elif c in "()":
            j = i + 1
            token = _Token(_Kind.LPAREN if c == "(" else _Kind.RPAREN, c, i)
        else:
            for symbol, op in _SYMBOLS:
                if text.startswith(symbol, i):
                    j = i + len(symbol)
                    token = _Token(_Kind.OPERATOR, symbol, i, operator=op)
                    break
            else:
                j = i + 1
                token = _Token(_Kind.BAD, c, i)
        self._pos = j
        return token

    def _string(self, start: int) -> tuple[int, str]:
        """Read the string opening at ``start``; return the offset after it and its value."""
        text, n = self._text, len(self._text)
        quote = text[start]
        chars: list[str] = []
        j = start + 1
        while True:
            if j >= n:
                raise ConditionError(
                    text,
                    start,
                    f"a closing quote ({quote}) for the string that starts here",
                    _END_TEXT,
                )
            c = text[j]
            if c == quote:
                return j + 1, "".join(chars)
            if c == "\\":
                if j + 1 >= n:
                    raise ConditionError(
                        text,
                        start,
                        f"a closing quote ({quote}) for the string that starts here",
                        _END_TEXT,
                    )
                escaped = _ESCAPES.get(text[j + 1])
                if escaped is None:
                    raise ConditionError(
                        text,
                        j,
                        "an escape: \\\\, \\', \\\" or \\n",
                        repr(text[j : j + 2]),
                    )
                chars.append(escaped)
                j += 2
            else:
                chars.append(c)
                j += 1

    # grammar

    def parse(self) -> Expr:
        if self._peek().kind is _Kind.END:
            self._fail(self._peek(), "a condition")
        root = self._or()
        if self._peek().kind is not _Kind.END:
            self._fail(self._peek(), _AFTER_TOP)
        return root

    def _enter(self, token: _Token) -> None:
        if self._depth >= MAX_DEPTH:
            self._fail(token, f"at most {MAX_DEPTH} levels of nesting (parentheses and 'not')")
        self._depth += 1

    def _or(self) -> Expr:
        items = [self._and()]
        while self._peek().kind is _Kind.OR:
            self._take()
            items.append(self._and())
        return items[0] if len(items) == 1 else Or(tuple(items))

    def _and(self) -> Expr:
        items = [self._not()]
        while self._peek().kind is _Kind.AND:
            self._take()
            items.append(self._not())
        return items[0] if len(items) == 1 else And(tuple(items))

    def _not(self) -> Expr:
        token = self._peek()
        if token.kind is _Kind.NOT:
            self._enter(token)
            self._take()
            inner: Expr = Not(self._not())
        elif token.kind is _Kind.LPAREN:
            self._enter(token)
            self._take()
            inner = self._or()
            if self._peek().kind is not _Kind.RPAREN:
                self._fail(self._peek(), _AFTER_INNER)
            self._take()
        else:
            return self._comparison()
        self._depth -= 1
        return inner

    def _comparison(self) -> Compare:
        left = self._operand(_TERM)
        token = self._take()
        if token.operator is None:
            self._fail(token, _OPERATOR)
        return Compare(token.operator, left, self._operand(_OPERAND))

    def _operand(self, expected: str) -> Operand:
        token = self._take()
        if token.operand is None:
            self._fail(token, expected)
        return token.operand


def parse_condition(text: str) -> Condition:
    """Parse a condition. Raises :class:`ConditionError` (and nothing else) if it is invalid."""
    if not isinstance(text, str):
        raise ConditionError("", 0, "the condition as a string", f"a {type(text).__name__}")
    if len(text) > MAX_LENGTH:
        raise ConditionError(
            text,
            MAX_LENGTH,
            f"at most {MAX_LENGTH} characters",
            f"{len(text)} characters",
        )
    return Condition(text, _Parser(text).parse())


# --- evaluation ------------------------------------------------------------------------------


class _Other:
    """A looked-up value of a type conditions do not know (bool, float, ...): equal to nothing."""


_OTHER = _Other()
_Value: TypeAlias = str | int | None | _Other
_ORDERING = {
    Operator.LT: operator.lt,
    Operator.LE: operator.le,
    Operator.GT: operator.gt,
    Operator.GE: operator.ge,
}


def _plain(value: object) -> _Value:
    # Plain str and int copies: a StrEnum state compares as its text, and no subclass code runs.
    if value is None:
        return None
    if isinstance(value, bool):
        return _OTHER
    if isinstance(value, str):
        return str.__str__(value)
    if isinstance(value, int):
        return int.__int__(value)
    return _OTHER


def _resolve(operand: Operand, values: Mapping[str, Mapping[str, str | int | None]]) -> _Value:
    if isinstance(operand, Literal):
        return _plain(operand.value)
    fields = values.get(operand.step) if isinstance(values, Mapping) else None
    if not isinstance(fields, Mapping):
        return None
    return _plain(fields.get(operand.field))


def _equal(a: _Value, b: _Value) -> bool:
    if isinstance(a, _Other) or isinstance(b, _Other):
        return False
    return type(a) is type(b) and a == b


def _compare(op: Operator, a: _Value, b: _Value) -> bool:
    if op is Operator.EQ:
        return _equal(a, b)
    if op is Operator.NE:
        return not _equal(a, b)
    if op is Operator.CONTAINS:
        return isinstance(a, str) and isinstance(b, str) and b in a
    if isinstance(a, int) and isinstance(b, int):
        return bool(_ORDERING[op](a, b))
    if isinstance(a, str) and isinstance(b, str):
        return bool(_ORDERING[op](a, b))
    return False


def _eval(node: Expr, values: Mapping[str, Mapping[str, str | int | None]]) -> bool:
    if isinstance(node, Compare):
        return _compare(node.op, _resolve(node.left, values), _resolve(node.right, values))
    if isinstance(node, And):
        return all(_eval(item, values) for item in node.operands)
    if isinstance(node, Or):
        return any(_eval(item, values) for item in node.operands)
    return not _eval(node.operand, values)


def evaluate(condition: Condition, values: Mapping[str, Mapping[str, str | int | None]]) -> bool:
    """Evaluate ``condition`` against step results: ``values[step][field]``.

    A missing step or field is ``None``. ``==`` and ``!=`` compare any two values, and values
    of different types are unequal (``None == None`` holds; ``"1" == 1`` does not). Ordering
    (``<``, ``<=``, ``>``, ``>=``) holds only between two integers or two strings, and is false
    otherwise. ``contains`` holds only when both sides are strings and the right one occurs in
    the left. ``and`` and ``or`` short-circuit. A value of any other type (a bool, a float) is
    equal to nothing. Never raises.
    """
    return _eval(condition.root, values)
