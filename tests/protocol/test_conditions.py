"""Job conditions: the tokenizer and parser, their errors, and evaluation semantics."""

from __future__ import annotations

import pickle
from collections.abc import Iterator, Mapping
from enum import IntEnum
from typing import Any

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from protocol.conditions import (
    MAX_DEPTH,
    MAX_LENGTH,
    And,
    Compare,
    Condition,
    ConditionError,
    Expr,
    Literal,
    Not,
    Operand,
    Operator,
    Or,
    Ref,
    evaluate,
    parse_condition,
)
from protocol.errors import TaskfleetError
from protocol.states import InstanceState

PROPERTY = settings(deadline=None, suppress_health_check=[HealthCheck.too_slow], max_examples=300)

OPERATOR_TEXT = "an operator (==, !=, <, <=, >, >=, contains)"
TERM_TEXT = "a string, a number, a reference like step.field, 'not' or '('"
OPERAND_TEXT = "a string, a number or a reference like step.field"
AFTER_TOP = "'and', 'or' or the end of the condition"
AFTER_INNER = "'and', 'or' or ')'"
DEPTH_TEXT = f"at most {MAX_DEPTH} levels of nesting (parentheses and 'not')"
END = "the end of the text"

VALUES: dict[str, dict[str, Any]] = {
    "a": {"status": "failed", "code": 3, "empty": "", "none": None},
    "b": {"status": "succeeded", "code": -1, "out": "disk full on C:"},
    "install-again": {"status": "succeeded", "exit_code": 0},
}


def check(text: str, values: Mapping[str, Mapping[str, Any]] = VALUES) -> bool:
    return evaluate(parse_condition(text), values)


# --- operators -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('a.status == "failed"', True),
        ('a.status == "succeeded"', False),
        ("a.code == 3", True),
        ("a.code == 4", False),
        ('a.status != "succeeded"', True),
        ('a.status != "failed"', False),
        ("a.code != 4", True),
        ("a.code != 3", False),
        ("a.code < 4", True),
        ("a.code < 3", False),
        ("a.code <= 3", True),
        ("a.code <= 2", False),
        ("a.code > 2", True),
        ("a.code > 3", False),
        ("a.code >= 3", True),
        ("a.code >= 4", False),
        ('a.status < "g"', True),
        ('a.status < "f"', False),
        ('a.status >= "failed"', True),
        ('a.status > "failed"', False),
        ('b.out contains "full"', True),
        ('b.out contains "empty"', False),
        ('b.out contains ""', True),
        ('a.empty contains "x"', False),
        ("a.code == b.code", False),
        ("b.code < a.code", True),
        ("1 == 1", True),
        ("'x' != \"x\"", False),
    ],
)
def test_each_operator_true_and_false(text: str, expected: bool) -> None:
    """Every comparison operator gives the expected truth value on strings and integers."""
    assert check(text) is expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('a.status == "failed" and a.code == 3', True),
        ('a.status == "failed" and a.code == 4', False),
        ('a.status == "nope" or a.code == 3', True),
        ('a.status == "nope" or a.code == 4', False),
        ("not a.code == 3", False),
        ("not a.code == 4", True),
        ("not not a.code == 3", True),
        ("a.code == 1 or a.code == 2 or a.code == 3", True),
        ("a.code == 3 and b.code == -1 and install-again.exit_code == 0", True),
    ],
)
def test_boolean_operators(text: str, expected: bool) -> None:
    """``and``, ``or`` and ``not`` combine comparisons as usual."""
    assert check(text) is expected


def test_and_binds_tighter_than_or() -> None:
    """``x or y and z`` means ``x or (y and z)``."""
    text = "a.code == 3 or a.code == 1 and a.code == 2"
    assert check(text) is True
    assert check("(a.code == 3 or a.code == 1) and a.code == 2") is False
    root = parse_condition(text).root
    assert isinstance(root, Or)
    assert isinstance(root.operands[1], And)


def test_not_binds_tighter_than_and_but_looser_than_comparison() -> None:
    """``not x == 1 and y`` means ``(not (x == 1)) and y``."""
    root = parse_condition("not a.code == 1 and a.code == 3").root
    assert root == And(
        (
            Not(Compare(Operator.EQ, Ref("a", "code"), Literal(1))),
            Compare(Operator.EQ, Ref("a", "code"), Literal(3)),
        )
    )
    assert check("not a.code == 1 and a.code == 3") is True
    assert check("not (a.code == 1 or a.code == 3)") is False


def test_parentheses_do_not_add_nodes() -> None:
    """Redundant parentheses parse to the same tree as none."""
    assert parse_condition("((a.x == 1))").root == parse_condition("a.x == 1").root


def test_and_and_or_chains_are_flat() -> None:
    """A chain of ``and`` (or of ``or``) is one node with every operand, not a deep tree."""
    root = parse_condition(" and ".join(["a.x == 1"] * 150)).root
    assert isinstance(root, And)
    assert len(root.operands) == 150


def test_and_or_short_circuit() -> None:
    """``and`` stops at the first false operand and ``or`` at the first true one."""

    class Recording(Mapping[str, Mapping[str, Any]]):
        def __init__(self) -> None:
            self.read: list[str] = []

        def __getitem__(self, key: str) -> Mapping[str, Any]:
            self.read.append(key)
            return {"x": 1}

        def __iter__(self) -> Iterator[str]:
            return iter(())

        def __len__(self) -> int:
            return 0

    values = Recording()
    assert evaluate(parse_condition("a.x == 2 and b.x == 1"), values) is False
    assert values.read == ["a"]
    values.read.clear()
    assert evaluate(parse_condition("a.x == 1 or b.x == 1"), values) is True
    assert values.read == ["a"]


# --- lexical forms ---------------------------------------------------------------------------


def test_hyphenated_step_ids() -> None:
    """Step ids may contain hyphens (and digits, underscores); fields may not contain hyphens."""
    cond = parse_condition("install-again.exit_code == 0 and step-2_b.ok == 1")
    assert cond.references() == {("install-again", "exit_code"), ("step-2_b", "ok")}
    assert check("install-again.exit_code == 0") is True
    with pytest.raises(ConditionError) as info:
        parse_condition("a.exit-code == 0")
    assert (info.value.position, info.value.expected, info.value.found) == (
        6,
        OPERATOR_TEXT,
        "'-'",
    )


@pytest.mark.parametrize(
    ("text", "value"),
    [
        (r'"plain"', "plain"),
        (r"'plain'", "plain"),
        (r'"back\\slash"', "back\\slash"),
        (r"'it\'s'", "it's"),
        (r'"say \"hi\""', 'say "hi"'),
        (r"'say \"hi\"'", 'say "hi"'),
        (r'"it\'s"', "it's"),
        (r'"two\nlines"', "two\nlines"),
        (r'"it' + "'" + r's"', "it's"),
        (r"''", ""),
        ('"a\tb\u00e9"', "a\tb\u00e9"),
        (r'"\\n"', "\\n"),
    ],
)
def test_string_literals_and_escapes(text: str, value: str) -> None:
    """Both quote styles work, with the escapes \\\\ \\' \\" \\n; other characters are literal."""
    root = parse_condition(f"a.s == {text}").root
    assert root == Compare(Operator.EQ, Ref("a", "s"), Literal(value))
    assert check(f"a.s == {text}", {"a": {"s": value}}) is True


@pytest.mark.parametrize(("text", "value"), [("0", 0), ("-1", -1), ("-0", 0), ("007", 7)])
def test_integer_literals(text: str, value: int) -> None:
    """Integers are decimal and may be negative."""
    root = parse_condition(f"a.code == {text}").root
    assert root == Compare(Operator.EQ, Ref("a", "code"), Literal(value))


def test_negative_integers_compare() -> None:
    """Negative literals order and compare like the numbers they are."""
    assert check("b.code == -1") is True
    assert check("b.code < 0") is True
    assert check("b.code > -2") is True
    assert check("-1 < b.code") is False
    assert check("b.code==-1") is True


def test_whitespace_is_optional_and_any_kind() -> None:
    """Tokens need no spaces between them, and tabs and newlines count as spaces."""
    assert check('a.status=="failed"and(b.code<0)') is True
    assert check("\ta.code\n==\r\n3\n") is True


def test_keywords_are_lowercase_and_a_word_before_a_dot_is_a_reference() -> None:
    """``AND`` is not a keyword; ``not.x`` is the field ``x`` of a step called ``not``."""
    with pytest.raises(ConditionError) as info:
        parse_condition("a.x == 1 AND a.y == 2")
    assert (info.value.position, info.value.found) == (9, "'AND'")
    cond = parse_condition("not.x == 1 and contains.y contains 'z'")
    assert cond.references() == {("not", "x"), ("contains", "y")}
    assert evaluate(cond, {"not": {"x": 1}, "contains": {"y": "xyz"}}) is True


# --- evaluation semantics --------------------------------------------------------------------


def test_missing_references_are_none() -> None:
    """A missing step or field is None: equal to another missing one, unequal to any value."""
    assert check("nope.x == other.y") is True
    assert check("a.nope == a.none") is True
    assert check("a.nope == 0") is False
    assert check("a.nope != 0") is True
    assert check('nope.x != ""') is True
    assert check("a.nope < 1") is False
    assert check("a.nope >= a.nope") is False
    assert check('a.nope contains ""') is False
    assert check("a.x == 1", {}) is False


def test_ordering_between_different_types_is_false() -> None:
    """<, <=, >, >= are false unless both sides are integers or both are strings."""
    for op in ("<", "<=", ">", ">="):
        assert check(f'a.code {op} "3"') is False
        assert check(f'"3" {op} a.code') is False
        assert check(f"a.none {op} 1") is False
    assert check('a.code == "3"') is False
    assert check('a.code != "3"') is True


def test_contains_needs_two_strings() -> None:
    """``contains`` is false when either side is not a string."""
    assert check("a.code contains 3") is False
    assert check('"123" contains 2') is False
    assert check('a.none contains "x"') is False
    assert check('"abc" contains "bc"') is True


def test_bool_is_not_an_int_and_unknown_types_equal_nothing() -> None:
    """A bool (or any type other than str, int, None) in the values equals and orders nothing."""
    values: dict[str, dict[str, Any]] = {"s": {"t": True, "f": 1.0, "l": [1]}}
    assert check("s.t == 1", values) is False
    assert check("s.t != 1", values) is True
    assert check("s.t == s.t", values) is False
    assert check("s.t >= 0", values) is False
    assert check("s.f == 1", values) is False
    assert check("s.l contains 1", values) is False


def test_str_and_int_subclasses_compare_as_their_values() -> None:
    """A StrEnum state compares as its text and an IntEnum as its number."""

    class Code(IntEnum):
        THREE = 3

    values = {"s": {"state": InstanceState.SUCCEEDED, "code": Code.THREE}}
    assert check('s.state == "succeeded"', values) is True
    assert check('s.state contains "succ"', values) is True
    assert check("s.code == 3 and s.code < 4", values) is True


def test_evaluate_survives_values_of_the_wrong_shape() -> None:
    """Values that are not mappings of mappings make references None instead of raising."""
    cond = parse_condition("a.x == b.y")
    shapes: list[Any] = [{"a": "not a mapping"}, {"a": None, "b": 3}, None, "text", []]
    for values in shapes:
        assert evaluate(cond, values) is True


# --- references and the Condition object -----------------------------------------------------


def test_references_lists_every_step_field_pair_once() -> None:
    """references() returns each (step, field) read anywhere in the tree, without duplicates."""
    cond = parse_condition(
        'not (a.x == b.y or (c.z contains "q" and a.x > 1)) and 1 == 1 and not d-e.f != "x"'
    )
    assert cond.references() == {("a", "x"), ("b", "y"), ("c", "z"), ("d-e", "f")}
    assert parse_condition("1 == 1").references() == frozenset()


def test_condition_keeps_its_text_and_is_frozen() -> None:
    """A Condition holds the original text, prints as it, compares by value and is immutable."""
    cond = parse_condition("a.x == 1")
    assert cond.text == str(cond) == "a.x == 1"
    assert cond == parse_condition("a.x == 1")
    with pytest.raises(AttributeError):
        cond.text = "b.y == 2"  # type: ignore[misc]


# --- parse errors ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "position", "expected", "found"),
    [
        # unterminated strings and bad escapes
        ("a.x == 'abc", 7, "a closing quote (') for the string that starts here", END),
        ('a.x == "abc\\', 7, 'a closing quote (") for the string that starts here', END),
        ("a.x == \"ab'", 7, 'a closing quote (") for the string that starts here', END),
        ("a.x == 'a\\tb'", 9, "an escape: \\\\, \\', \\\" or \\n", "'\\\\t'"),
        # unexpected characters
        ("a.x == 1 @ b", 9, AFTER_TOP, "'@'"),
        ("a.status = 1", 9, OPERATOR_TEXT, "'='"),
        ("a.x ! 1", 4, OPERATOR_TEXT, "'!'"),
        ("a.x == +1", 7, OPERAND_TEXT, "'+'"),
        ("a.x == - 1", 7, OPERAND_TEXT, "'-'"),
        ("a.x == 1.5", 7, OPERAND_TEXT, "'1.5'"),
        ("a.x == 12abc", 7, OPERAND_TEXT, "'12abc'"),
        ("\u00e9.x == 1", 0, TERM_TEXT, "'\u00e9'"),
        ("a.x == true", 7, OPERAND_TEXT, "'true'"),
        ("status == 1", 0, TERM_TEXT, "'status'"),
        ("a. == 1", 2, "a field name after 'a.'", "' '"),
        ("a.1 == 1", 2, "a field name after 'a.'", "'1'"),
        ("a.", 2, "a field name after 'a.'", END),
        ("a.b.c == 1", 3, OPERATOR_TEXT, "'.'"),
        # missing operands
        ("a.x ==", 6, OPERAND_TEXT, END),
        ("== 1", 0, TERM_TEXT, "'=='"),
        ("a.x == 1 and", 12, TERM_TEXT, END),
        ("a.x == 1 or or b.y == 2", 12, TERM_TEXT, "'or'"),
        ("not", 3, TERM_TEXT, END),
        ("()", 1, TERM_TEXT, "')'"),
        ("a.x == (1)", 7, OPERAND_TEXT, "'('"),
        ("a.x == not b.y", 7, OPERAND_TEXT, "'not'"),
        # parentheses
        ("(a.x == 1", 9, AFTER_INNER, END),
        ("((a.x == 1) and (b.y == 2)", 26, AFTER_INNER, END),
        ("(a.x == 1 b.y == 2)", 10, AFTER_INNER, "'b.y'"),
        ("(a.x) == 1", 4, OPERATOR_TEXT, "')'"),
        # trailing garbage
        ("a.x == 1)", 8, AFTER_TOP, "')'"),
        ("a.x == 1 b.y == 2", 9, AFTER_TOP, "'b.y'"),
        ("a.x == 1 == 2", 9, AFTER_TOP, "'=='"),
        ("a.x == 1 'tail'", 9, AFTER_TOP, "\"'tail'\""),
        # bare operands without an operator
        ("a.status", 8, OPERATOR_TEXT, END),
        ("'yes'", 5, OPERATOR_TEXT, END),
        ("-1", 2, OPERATOR_TEXT, END),
        ("a.x and b.y == 1", 4, OPERATOR_TEXT, "'and'"),
        ("not a.ok", 8, OPERATOR_TEXT, END),
        ("(a.ok)", 5, OPERATOR_TEXT, "')'"),
        # empty
        ("", 0, "a condition", END),
        (" \t\n", 3, "a condition", END),
    ],
)
def test_parse_errors(text: str, position: int, expected: str, found: str) -> None:
    """Each kind of mistake is reported at its offset, with what was expected and found there."""
    with pytest.raises(ConditionError) as info:
        parse_condition(text)
    err = info.value
    assert (err.text, err.position, err.expected, err.found) == (text, position, expected, found)
    assert str(err) == (
        f"condition {text!r} at position {position}: expected {expected}, found {found}"
    )


def test_error_message_format() -> None:
    """The message quotes the condition, the position, what was expected and what was found."""
    with pytest.raises(ConditionError) as info:
        parse_condition("a.status = 1")
    assert str(info.value) == (
        "condition 'a.status = 1' at position 9: "
        "expected an operator (==, !=, <, <=, >, >=, contains), found '='"
    )


def test_the_first_error_in_reading_order_is_reported() -> None:
    """A grammar error is reported before a lexical error that comes later in the text."""
    with pytest.raises(ConditionError) as info:
        parse_condition("a.x b.y 'unterminated")
    assert (info.value.position, info.value.found) == (4, "'b.y'")


def test_error_is_a_taskfleet_error_and_pickles() -> None:
    """ConditionError sits under TaskfleetError and survives pickling with its fields."""
    with pytest.raises(TaskfleetError) as info:
        parse_condition("a.x ==")
    assert isinstance(info.value, ConditionError)
    copy = pickle.loads(pickle.dumps(info.value))
    assert (copy.text, copy.position, copy.expected, copy.found) == (
        "a.x ==",
        6,
        OPERAND_TEXT,
        END,
    )
    assert str(copy) == str(info.value)


def test_long_text_is_clipped_in_the_message_but_kept_in_full() -> None:
    """The message shows at most 80 characters of the condition; ``text`` keeps all of it."""
    text = "a.x == 1 and " * 20 + "a.x"
    with pytest.raises(ConditionError) as info:
        parse_condition(text)
    assert info.value.text == text
    assert f"{text[:77]}..." in str(info.value)


def test_too_long() -> None:
    """A condition longer than MAX_LENGTH is refused at that offset, before parsing."""
    ok = "a.x == '" + "y" * (MAX_LENGTH - 9) + "'"
    assert len(ok) == MAX_LENGTH
    parse_condition(ok)
    with pytest.raises(ConditionError) as info:
        parse_condition(ok + " ")
    assert (info.value.position, info.value.expected, info.value.found) == (
        MAX_LENGTH,
        f"at most {MAX_LENGTH} characters",
        f"{MAX_LENGTH + 1} characters",
    )


@pytest.mark.parametrize("opener", ["(", "not ", "not (", "(not "])
def test_nesting_up_to_the_limit_parses_and_evaluates(opener: str) -> None:
    """MAX_DEPTH levels of parentheses or ``not`` parse and evaluate."""
    levels = opener.count("(") + opener.count("not")
    n = MAX_DEPTH // levels
    text = opener * n + "a.x == 1" + ")" * (opener.count("(") * n)
    cond = parse_condition(text)
    assert evaluate(cond, {"a": {"x": 1}}) is (opener.count("not") * n % 2 == 0)


@pytest.mark.parametrize("opener", ["(", "not "])
def test_too_deep(opener: str) -> None:
    """One level past MAX_DEPTH is refused at the token that opens it."""
    closers = ")" * (opener.count("(") * (MAX_DEPTH + 1))
    text = opener * (MAX_DEPTH + 1) + "a.x == 1" + closers
    with pytest.raises(ConditionError) as info:
        parse_condition(text)
    assert info.value.position == len(opener) * MAX_DEPTH
    assert info.value.expected == DEPTH_TEXT
    assert info.value.found == repr(opener.strip())


def test_deep_nesting_within_the_length_limit_is_refused_not_a_crash() -> None:
    """The deepest text that fits in MAX_LENGTH raises ConditionError, never RecursionError."""
    for text in ("(" * MAX_LENGTH, "not " * (MAX_LENGTH // 4)):
        with pytest.raises(ConditionError) as info:
            parse_condition(text)
        assert info.value.expected == DEPTH_TEXT


def test_text_that_is_not_a_string_is_refused() -> None:
    """Passing something other than a str raises ConditionError, not TypeError."""
    with pytest.raises(ConditionError) as info:
        parse_condition(b"a.x == 1")  # type: ignore[arg-type]
    assert info.value.found == "a bytes"


# --- properties ------------------------------------------------------------------------------

STEPS = st.one_of(
    st.sampled_from(["a", "b", "install-again", "not", "and"]),
    st.from_regex(r"[A-Za-z_][A-Za-z0-9_-]{0,8}", fullmatch=True),
)
FIELDS = st.one_of(
    st.sampled_from(["x", "status", "exit_code"]),
    st.from_regex(r"[A-Za-z_][A-Za-z0-9_]{0,8}", fullmatch=True),
)
OPERANDS: st.SearchStrategy[Operand] = st.one_of(
    st.builds(Ref, STEPS, FIELDS),
    st.builds(Literal, st.integers()),
    st.builds(Literal, st.text(max_size=8)),
)
COMPARES = st.builds(Compare, st.sampled_from(list(Operator)), OPERANDS, OPERANDS)
TREES: st.SearchStrategy[Expr] = st.recursive(
    COMPARES,
    lambda inner: st.one_of(
        st.builds(Not, inner),
        st.lists(inner, min_size=2, max_size=4).map(lambda xs: And(tuple(xs))),
        st.lists(inner, min_size=2, max_size=4).map(lambda xs: Or(tuple(xs))),
    ),
    max_leaves=12,
)
VALUE_MAPS = st.dictionaries(
    st.sampled_from(["a", "b", "install-again", "not", "and"]),
    st.dictionaries(
        st.sampled_from(["x", "status", "exit_code"]),
        st.one_of(st.none(), st.integers(), st.text(max_size=4), st.booleans()),
        max_size=3,
    ),
    max_size=4,
)

SOUP_COMPARISONS = [
    "a.x == 1",
    "b.status contains 'ail'",
    "install-again.exit_code >= -1",
    "not.x != b.status",
    '"s" < a.x',
]
SOUP_CONNECTIVES = ["and", "or", "not", "(", ")"]
SOUP_FRAGMENTS = [
    "contains",
    "==",
    "!=",
    "<",
    "<=",
    ">",
    ">=",
    "=",
    "!",
    "a.x",
    "install-again.exit_code",
    "a.",
    ".",
    "a",
    "-",
    "'s'",
    "'\\n\\''",
    "'\\q'",
    "'",
    '"',
    "\\",
    "0",
    "-1",
    "1.5",
    "AND",
    "@",
    "\u00e9",
    "\x00",
]
# Whole comparisons and connectives as well as fragments, so that a fair share of soups parse.
SOUP = st.lists(
    st.tuples(
        st.one_of(
            st.sampled_from(SOUP_COMPARISONS),
            st.sampled_from(SOUP_CONNECTIVES),
            st.sampled_from(SOUP_FRAGMENTS),
        ),
        st.sampled_from(["", " ", " ", "\n"]),
    ),
    max_size=30,
).map(lambda pairs: "".join(token + sep for token, sep in pairs))


def render(node: Expr) -> str:
    """Fully parenthesised text for a tree."""
    if isinstance(node, Compare):
        return f"{render_operand(node.left)} {node.op} {render_operand(node.right)}"
    if isinstance(node, And | Or):
        word = " and " if isinstance(node, And) else " or "
        return word.join(f"({render(item)})" for item in node.operands)
    return f"not ({render(node.operand)})"


def render_operand(operand: Operand) -> str:
    if isinstance(operand, Ref):
        return f"{operand.step}.{operand.field}"
    if isinstance(operand.value, int):
        return str(operand.value)
    escaped = operand.value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
    return f'"{escaped}"'


def nesting(node: Expr) -> int:
    """Levels of parentheses and ``not`` that render() produces."""
    if isinstance(node, Compare):
        return 0
    if isinstance(node, Not):
        return 2 + nesting(node.operand)
    return 1 + max(nesting(item) for item in node.operands)


def parse_or_refuse(text: str) -> Condition | None:
    try:
        return parse_condition(text)
    except ConditionError as err:
        assert 0 <= err.position <= len(text)
        assert err.text == text
        return None


@PROPERTY
@given(st.one_of(st.text(), st.text(alphabet="ab.x-_()=!<> '\"\\n01and or not contains")))
def test_any_text_parses_or_raises_condition_error(text: str) -> None:
    """For any text, parse_condition returns a Condition or raises ConditionError, nothing else."""
    parse_or_refuse(text)


@PROPERTY
@given(SOUP, VALUE_MAPS)
def test_token_soup_parses_or_raises_and_evaluates_to_a_bool(
    text: str, values: dict[str, dict[str, Any]]
) -> None:
    """Random sequences of the language's own tokens parse or raise ConditionError; any that
    parse evaluate to a bool."""
    cond = parse_or_refuse(text)
    if cond is not None:
        assert evaluate(cond, values) in (True, False)
        assert type(evaluate(cond, values)) is bool


@PROPERTY
@given(TREES, VALUE_MAPS)
def test_rendered_trees_parse_back_and_evaluate_to_a_bool(
    tree: Expr, values: dict[str, dict[str, Any]]
) -> None:
    """Any tree rendered to text parses back to the same tree, which evaluates to a bool."""
    assume(nesting(tree) <= MAX_DEPTH)
    text = render(tree)
    assume(len(text) <= MAX_LENGTH)
    cond = parse_condition(text)
    assert cond.root == tree
    assert type(evaluate(cond, values)) is bool


@PROPERTY
@given(TREES, TREES, VALUE_MAPS)
def test_not_inverts_and_de_morgan_holds(
    x: Expr, y: Expr, values: dict[str, dict[str, Any]]
) -> None:
    """Evaluation is consistent: ``not x`` inverts ``x``, and De Morgan's laws hold."""

    def ev(node: Expr) -> bool:
        return evaluate(Condition("", node), values)

    assert ev(Not(x)) is not ev(x)
    assert ev(Not(And((x, y)))) is ev(Or((Not(x), Not(y))))
    assert ev(Not(Or((x, y)))) is ev(And((Not(x), Not(y))))
