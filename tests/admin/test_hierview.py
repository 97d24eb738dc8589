"""What a listing shows of the hierarchy (``admin.hierview``): a ``from`` column naming the
parent NS an item came from and a ``replicated`` one, each only when a row needs it."""

from __future__ import annotations

from admin.hierview import hierarchy_columns, hierarchy_line
from admin.output import table

BASE = [("name", "name")]


def test_no_hierarchy_leaves_the_columns_as_they_were():
    rows = [{"name": "a", "origin": ""}, {"name": "b"}]
    assert hierarchy_columns(rows, BASE) == BASE


def test_items_from_the_parent_are_marked_in_a_from_column():
    rows = [
        {"name": "mine", "origin": ""},
        {"name": "theirs", "origin": "top", "replicate": True, "remote_start": True},
    ]
    shown = table(rows, hierarchy_columns(rows, BASE)).splitlines()
    assert shown[0].split() == ["NAME", "REPLICATED", "FROM"]
    assert shown[1].split() == ["mine"]
    assert shown[2].split() == ["theirs", "yes,", "startable", "parent", "top"]


def test_an_items_detail_line_says_where_to_change_it():
    assert hierarchy_line({"origin": "top"}) == (
        "from the parent NS top (read-only here: change it there)"
    )
    assert hierarchy_line({"replicate": True}) == "replicated to the child NS"
