"""The hierarchy link's own rules, without processes: the loop check a parent makes on a child's
hello, the server flags that link an NS to its parent (and their usage errors), the
``[hierarchy]`` table of a configuration file, and the replicate-hierarchy report's lines."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from admin.cli import build_parser
from admin.hierverbs import parent_settings
from protocol import PROTOCOL_VERSION
from protocol.errors import HandshakeError
from protocol.messages import Hello
from protocol.session import ALLOWED, ALLOWED_DOWN, CLOSE_NOT_ALLOWED, Role
from server.hierarchy.parent import Children
from server.tasktypes.hierarchy import report_lines

HQ = "hq:SHA256:" + "1" * 64
TOP = "top:SHA256:" + "2" * 64
SITE = "site-a:SHA256:" + "3" * 64
BRANCH = "branch-1:SHA256:" + "4" * 64


def parent(above: list[str]) -> Children:
    """The parent side of ``hq``, with the ids above it."""
    side = Children()
    side.ns = SimpleNamespace(name="hq", server_id=HQ)  # type: ignore[assignment]  # only name and id are read
    side.above = above
    return side


def hello(ns_id: str, below: list[str], identity: str = "site-a", **more) -> Hello:
    return Hello(
        id="1",
        version=PROTOCOL_VERSION,
        role="child",
        identity=identity,
        credentials={},
        info={"ns_id": ns_id, "below": below, "cursor": 0, "url": "wss://x:1", **more},
    )


def test_the_child_role_asks_and_answers_both_ways():
    assert Role("child") is Role.CHILD
    assert ALLOWED[Role.CHILD] == ALLOWED_DOWN[Role.CHILD] == {"request", "response", "error"}


def test_a_child_not_in_a_loop_is_let_through():
    parent([TOP]).check_child_hello(hello(SITE, [BRANCH]))


@pytest.mark.parametrize(
    ("ns_id", "below", "looped"),
    [
        (HQ, [], HQ),  # the NS itself, under another name's guise
        (SITE, [HQ], HQ),  # the parent is under the child
        (SITE, [BRANCH, TOP], TOP),  # an NS above the parent is under the child
        (TOP, [], TOP),  # the child is above the parent already
    ],
)
def test_a_loop_is_refused_naming_both_ns(ns_id, below, looped):
    with pytest.raises(HandshakeError) as refused:
        parent([TOP]).check_child_hello(hello(ns_id, below))
    assert refused.value.code == "hierarchy_loop"
    assert refused.value.close_code == CLOSE_NOT_ALLOWED
    text = refused.value.message
    assert "site-a" in text and "hq" in text and looped in text


@pytest.mark.parametrize(
    "info",
    [{"ns_id": 5}, {"ns_id": SITE, "below": "x"}, {"ns_id": SITE, "below": [1]}],
)
def test_a_malformed_child_hello_is_refused(info):
    bad = Hello(
        id="1", version=PROTOCOL_VERSION, role="child", identity="site-a", credentials={}, info=info
    )
    with pytest.raises(HandshakeError) as refused:
        parent([]).check_child_hello(bad)
    assert refused.value.code == "bad_hello"


def server_args(*argv: str):
    return build_parser().parse_args(["server", "--data", "/nonexistent-data", *argv])


def test_parent_flags_make_the_link_settings():
    got = parent_settings(
        server_args("--parent", "wss://hq:8470", "--parent-fingerprint", "SHA256:" + "ab" * 32)
    )
    assert isinstance(got, dict)
    assert got["parent"] == "wss://hq:8470"
    assert got["parent_trust"].fingerprint is not None
    assert parent_settings(server_args()) == {}


def test_a_parent_that_is_a_pair_is_given_both_addresses():
    got = parent_settings(
        server_args("--parent", "wss://hq-a:8470,wss://hq-b:8470", "--parent-ca", "/etc/hosts")
    )
    assert isinstance(got, dict) and got["parent"] == "wss://hq-a:8470,wss://hq-b:8470"


@pytest.mark.parametrize(
    ("argv", "said"),
    [
        (["--parent-fingerprint", "SHA256:ab"], "give --parent URL"),
        (["--parent-ca", "/etc/hosts"], "give --parent URL"),
        (["--parent", "wss://hq:8470"], "no way to trust the parent NS"),
        (["--parent", "ws://hq:8470"], "plain ws://"),
        (["--parent", "wss://a:1,b:1", "--parent-ca", "/etc/hosts"], "--parent"),
        (["--parent", " , ", "--parent-ca", "/etc/hosts"], "needs the parent's address"),
        (["--parent", "hq:8470", "--parent-ca", "/etc/hosts"], "--parent"),
        (["--parent", "wss://hq:1", "--parent-ca", "/nonexistent.pem"], "no such file"),
    ],
)
def test_a_bad_combination_names_the_fix(argv, said):
    got = parent_settings(server_args(*argv))
    assert isinstance(got, str) and said in got, got


def test_the_hierarchy_table_of_a_configuration_file(tmp_path):
    config = tmp_path / "server.toml"
    config.write_text(
        '[hierarchy]\nparent = "wss://hq:8470"\nparent_fingerprint = "SHA256:ab"\n'
        f'enrol_token_file = "{tmp_path / "t"}"\n'
    )
    args = server_args("--config", str(config))
    assert args.parent == "wss://hq:8470"
    assert args.parent_fingerprint == "SHA256:ab"
    assert args.enrol_token_file == str(tmp_path / "t")
    secret = tmp_path / "secret.toml"
    secret.write_text('[hierarchy]\nenrol_token = "tfe_x"\n')
    with pytest.raises(SystemExit) as ended:
        server_args("--config", str(secret))
    assert ended.value.code == 2


def test_the_report_has_a_line_per_child_indented_per_tier():
    lines = report_lines(
        [
            {
                "child": "site-a",
                "connected": True,
                "sent": 3,
                "changed": 1,
                "clashes": [{"kind": "task", "name": "backup"}],
                "lag_s": 0.25,
                "below": [
                    {
                        "child": "branch-1",
                        "connected": False,
                        "sent": 0,
                        "changed": 0,
                        "clashes": [],
                        "lag_s": 12.0,
                        "below": [],
                    }
                ],
            }
        ]
    )
    assert lines == [
        "site-a: connected, sent 3 items, changed 1, clashes 1 (task backup), lag 0.2s",
        "  branch-1: not connected (reconciled when it links), sent 0 items, changed 0,"
        " clashes 0, lag 12.0s",
    ]
