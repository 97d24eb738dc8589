"""Message checking on decode: unknown types, missing and mistyped fields, by field path."""

from __future__ import annotations

from typing import Any

import msgpack
import pytest

from protocol.codec import Limits, decode, decode_frame
from protocol.errors import FrameError, MessageError, ProtocolError
from protocol.messages import Cancel, Dispatch, Hello, Presence, Report, Reports, from_wire


def _hello(**changes: Any) -> dict[str, Any]:
    data: dict[str, Any] = {
        "type": "hello",
        "id": "a1",
        "version": 1,
        "role": "agent",
        "identity": "pc-1",
        "credentials": {"token": "t"},
    }
    data.update(changes)
    return data


def _refused(data: Any) -> MessageError:
    with pytest.raises(MessageError) as info:
        decode(msgpack.packb(data))
    err = info.value
    assert err.close_code == 4422
    return err


def test_minimal_hello_decodes_with_defaults() -> None:
    """A hello with only required fields decodes; optional fields take their defaults."""
    message = decode(msgpack.packb(_hello()))
    assert message == Hello(
        id="a1", version=1, role="agent", identity="pc-1", credentials={"token": "t"}
    )
    assert isinstance(message, Hello)
    assert message.capabilities == []
    assert message.info == {}


def test_unknown_type_is_refused() -> None:
    """A type missing from MESSAGE_TYPES is refused with code unknown_type and close code 4422."""
    err = _refused({"type": "launch_missiles", "id": "x"})
    assert err.code == "unknown_type"
    assert "launch_missiles" in err.message


@pytest.mark.parametrize("type_value", [None, 5, ["hello"]], ids=["missing", "int", "list"])
def test_missing_or_non_string_type_is_refused(type_value: Any) -> None:
    """A map without a string "type" is a bad_message naming the type field."""
    data = {"id": "x"} if type_value is None else {"type": type_value, "id": "x"}
    err = _refused(data)
    assert err.code == "bad_message"
    assert err.message.startswith("type:")


@pytest.mark.parametrize("missing", ["id", "version", "role", "identity", "credentials"])
def test_missing_required_field_names_the_field(missing: str) -> None:
    """Each required hello field, when absent, is refused with a message naming it."""
    data = _hello()
    del data[missing]
    err = _refused(data)
    assert err.code == "bad_message"
    assert err.message == f"{missing}: required field is missing"


def test_integer_given_as_string_is_refused() -> None:
    """An int field sent as a str ("1") is refused, naming the field and both types."""
    err = _refused(_hello(version="1"))
    assert err.message == "version: expected an integer, got str"


def test_bool_given_for_integer_is_refused() -> None:
    """True is not accepted for an int field, although bool is an int subclass in Python."""
    err = _refused(_hello(version=True))
    assert err.message == "version: expected an integer, got bool"


def test_scalar_fields_pass_as_they_are_and_the_rest_is_still_checked() -> None:
    """Exact scalars (and None where a field allows it) skip their checker: the values come
    through unchanged; an int for a float field still becomes a float; None for a field that
    does not allow it, and a str for an optional int, are still refused by field path."""
    item = {"instance_id": 7, "state": "succeeded", "return_code": None, "started_at": 2}
    message = from_wire({"type": "reports", "id": "r", "items": [dict(item, ended_at=3.5)]})
    assert isinstance(message, Reports)
    (report,) = message.items
    assert (report.instance_id, report.state, report.return_code) == (7, "succeeded", None)
    assert type(report.started_at) is float and report.started_at == 2.0
    assert report.ended_at == 3.5
    for bad, where in (({"state": None}, "state"), ({"return_code": "0"}, "return_code")):
        with pytest.raises(MessageError) as err:
            from_wire({"type": "reports", "id": "r", "items": [dict(item, **bad)]})
        assert err.value.message.startswith(f"items[0].{where}: expected"), err.value.message


def test_bool_given_for_float_is_refused() -> None:
    """True is not accepted for a float field either."""
    data = {
        "type": "dispatch",
        "id": "x",
        "run_id": 1,
        "task": {},
        "expires_in_s": True,
        "targets": [],
    }
    err = _refused(data)
    assert err.message == "expires_in_s: expected a number, got bool"


def test_list_given_for_map_is_refused() -> None:
    """A list where a map is expected is refused."""
    err = _refused(_hello(credentials=["token", "t"]))
    assert err.message == "credentials: expected a map, got list"


def test_map_given_for_list_is_refused() -> None:
    """A map where a list is expected is refused."""
    err = _refused({"type": "cancel", "id": "x", "instance_ids": {"a": 1}})
    assert err.message == "instance_ids: expected a list, got dict"


def test_str_given_for_bool_is_refused() -> None:
    """A str where a bool is expected is refused."""
    err = _refused({"type": "presence", "id": "x", "full": "yes"})
    assert err.message == "full: expected bool, got str"


def test_mistyped_list_item_is_refused_by_index() -> None:
    """A bad item of a list field is named by its index."""
    err = _refused({"type": "cancel", "id": "x", "instance_ids": [1, 2, "3"]})
    assert err.message == "instance_ids[2]: expected an integer, got str"


def test_nested_report_missing_instance_id_names_the_path() -> None:
    """A Report without instance_id inside reports.items is refused at items[i].instance_id."""
    data = {
        "type": "reports",
        "id": "x",
        "items": [{"instance_id": 1, "state": "running"}, {"state": "running"}],
    }
    err = _refused(data)
    assert err.message == "items[1].instance_id: required field is missing"


def test_nested_report_first_item_path() -> None:
    """The path of the first item is items[0].instance_id."""
    err = _refused({"type": "reports", "id": "x", "items": [{"state": "succeeded"}]})
    assert err.message == "items[0].instance_id: required field is missing"


def test_nested_record_that_is_not_a_map_is_refused() -> None:
    """A nested record given as a list is refused at its index."""
    err = _refused({"type": "reports", "id": "x", "items": [[1, "running"]]})
    assert err.message == "items[0]: expected a map, got list"


def test_nested_optional_field_mistyped_is_refused() -> None:
    """An optional int (return_code) in a nested Report is still type-checked; None is fine."""
    items = [{"instance_id": 1, "state": "failed", "return_code": None}]
    ok = decode(msgpack.packb({"type": "reports", "id": "x", "items": items}))
    assert isinstance(ok, Reports)
    assert ok.items == [Report(instance_id=1, state="failed")]
    items = [{"instance_id": 1, "state": "failed", "return_code": "1"}]
    err = _refused({"type": "reports", "id": "x", "items": items})
    assert err.message == "items[0].return_code: expected an integer, got str"


def test_nested_target_token_values_are_checked() -> None:
    """Token values in a Target must be strings; the path names the token."""
    target = {"instance_id": 1, "computer": "pc", "computer_id": 2, "tokens": {"RUNID": 17}}
    data = {
        "type": "dispatch",
        "id": "x",
        "run_id": 1,
        "task": {},
        "expires_in_s": 1.0,
        "targets": [target],
    }
    err = _refused(data)
    assert err.message == "targets[0].tokens.RUNID: expected str, got int"


def test_unknown_extra_fields_are_ignored() -> None:
    """Fields a newer peer adds, top-level or nested, are ignored rather than refused."""
    message = decode(msgpack.packb(_hello(colour="blue", future={"x": 1})))
    assert message == from_wire(_hello())
    data = {
        "type": "reports",
        "id": "x",
        "items": [{"instance_id": 1, "state": "running", "cpu_pct": 12.5}],
    }
    reports = decode(msgpack.packb(data))
    assert reports == Reports(id="x", items=[Report(instance_id=1, state="running")])


def test_from_wire_refuses_a_non_map() -> None:
    """from_wire itself refuses a non-map with MessageError."""
    with pytest.raises(MessageError, match="must hold a map"):
        from_wire([1, 2])


def test_message_errors_are_protocol_errors() -> None:
    """MessageError is a ProtocolError, so I/O layers can catch one type and close."""
    with pytest.raises(ProtocolError):
        from_wire({"type": "cancel", "id": "x"})


def test_built_messages_have_expected_types() -> None:
    """from_wire builds the right class for several types."""
    assert isinstance(from_wire({"type": "cancel", "id": "1", "instance_ids": []}), Cancel)
    assert isinstance(from_wire({"type": "presence", "id": "1"}), Presence)
    built = from_wire(
        {"type": "dispatch", "id": "1", "run_id": 3, "task": {}, "expires_in_s": 2, "targets": []}
    )
    assert isinstance(built, Dispatch)
    assert built.run_id == 3


def test_map_fields_refuse_non_string_keys():
    """A map field whose keys are not strings (msgpack bytes keys pass strict_map_key) is refused."""
    with pytest.raises(MessageError, match="credentials: map keys must be strings"):
        from_wire(
            {
                "type": "hello",
                "id": "1",
                "version": 1,
                "role": "agent",
                "identity": "pc",
                "credentials": {b"token": "x"},
            }
        )


# -- nesting limit, enforced by the compiled checker in the same walk ---------------------------

SHALLOW = Limits(max_depth=4)


def _nested(levels: int) -> Any:
    value: Any = 1
    for _ in range(levels):
        value = {"k": value}
    return value


@pytest.mark.parametrize("where", ["field", "unknown"])
def test_decode_refuses_nesting_below_an_any_field(where: str) -> None:
    """A map under a free-form field (``info``) or an unknown field nests too deep: 4400, not 4422."""
    # The frame is level 1 and ``info`` level 2, so two more maps reach the limit of 4.
    key = "info" if where == "field" else "extra"
    assert isinstance(decode(msgpack.packb(_hello(**{key: _nested(3)})), SHALLOW), Hello)
    with pytest.raises(FrameError) as info:
        decode(msgpack.packb(_hello(**{key: _nested(4)})), SHALLOW)
    assert info.value.close_code == 4400
    assert "deeper than 4" in info.value.message


def test_decode_counts_typed_containers_towards_the_limit() -> None:
    """reports (2) → a report (3): with max_depth 2 the report map itself is one level too deep."""
    frame = msgpack.packb(
        {"type": "reports", "id": "1", "items": [{"instance_id": 1, "state": "x"}]}
    )
    assert isinstance(decode(frame, Limits(max_depth=3)), Reports)
    with pytest.raises(FrameError):
        decode(frame, Limits(max_depth=2))


def test_decode_and_decode_frame_agree_on_depth() -> None:
    """The checker's depth rule is the raw frame rule: same frames pass and fail."""
    for levels in range(1, 8):
        frame = msgpack.packb(_hello(info=_nested(levels)))
        limits = Limits(max_depth=5)
        try:
            decode_frame(frame, limits)
            raw_ok = True
        except FrameError:
            raw_ok = False
        try:
            decode(frame, limits)
            ok = True
        except FrameError:
            ok = False
        assert ok == raw_ok, levels


# -- the checkers' fast paths decide as the general path does -----------------------------------


class _Str(str):
    """A str subclass: not of exactly ``str``, so it takes the general path (which accepts it)."""


def _outcome(check: Any, value: Any, budget: int) -> tuple[str, Any]:
    from protocol.messages import _Bad, _TooDeep

    try:
        return ("ok", check(value, budget))
    except _Bad as bad:
        return ("bad", (bad.message, list(bad.where)))
    except _TooDeep:
        return ("deep", None)


@pytest.mark.parametrize(
    ("kind", "values"),
    [
        (
            "dict[str, str]",
            [
                {},
                {"a": "x"},
                {"a": 1},
                {"a": "x", "b": None},
                {1: "x"},
                {b"a": "x"},
                {"a": _Str("x")},
                {"a": ["x"]},
                "x",
                [],
                None,
            ],
        ),
        (
            "dict[str, Any]",
            [
                {},
                {"a": 1, "b": "x"},
                {"a": {"b": {"c": 1}}},
                {"a": [[[1]]]},
                {1: 2},
                {"a": {1: 2}},
                {"a": None},
                [],
                "x",
            ],
        ),
        ("list[str]", [[], ["a", "b"], ["a", 1], [None], [_Str("a")], [["a"]], "ab", {}, None]),
        ("list[int]", [[], [1, 2], [1, True], [1, 1.5], ["1"]]),
    ],
)
def test_container_fast_paths_decide_as_the_general_path(kind: str, values: list[Any]) -> None:
    """Every value, at every depth budget, gets the same result or the same error (message and
    path) from a checker with its one-loop fast path as from the general checker alone."""
    from protocol.messages import _check_dict, _check_list, _compile_hint

    fast, general = {
        "dict[str, str]": (_check_dict(_compile_hint(str), str), _check_dict(_compile_hint(str))),
        "dict[str, Any]": (_compile_hint(dict[str, Any]), _check_dict(_compile_hint(Any))),
        "list[str]": (_check_list(_compile_hint(str), str), _check_list(_compile_hint(str))),
        "list[int]": (_check_list(_compile_hint(int), int), _check_list(_compile_hint(int))),
    }[kind]
    for value in values:
        for budget in range(5):
            assert _outcome(fast, value, budget) == _outcome(general, value, budget), (
                value,
                budget,
            )


def test_a_message_type_field_is_not_walked_as_unknown_but_unknown_fields_are() -> None:
    """``type`` is expected in a message's map; a deep unknown field next to it is still refused."""
    frame = {"type": "cancel", "id": "1", "instance_ids": [1], "extra": _nested(12)}
    with pytest.raises(FrameError):
        from_wire(frame, 12)
    assert isinstance(from_wire({**frame, "extra": 1}, 12), Cancel)


def test_with_computer_keeps_every_other_field() -> None:
    """``Report.with_computer`` is ``dataclasses.replace(report, computer=...)``: a field added to
    ``Report`` and forgotten there fails this test (every field is set to a non-default)."""
    import dataclasses

    values: dict[str, Any] = {}
    for i, f in enumerate(dataclasses.fields(Report)):
        hint = str(f.type)
        values[f.name] = 100 + i if "int" in hint else 0.5 + i if "float" in hint else f"v{i}"
    report = Report(**values)
    assert report.with_computer("pc-9") == dataclasses.replace(report, computer="pc-9")
    assert report.with_computer("pc-9") != report
