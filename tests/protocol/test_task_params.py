"""run-script's run_as and working_dir (and cwd, working_dir's first name) as checked on save;
the MAC an inventory gives its computer, as the NS checks it."""

from __future__ import annotations

import pytest

from protocol.errors import ValidationError
from protocol.tasks import inventory_mac, unicast_mac, validate_task


def _problems(params: dict, tid: str = "run-script") -> dict[str, str]:
    with pytest.raises(ValidationError) as info:
        validate_task({"name": "t", "type": tid, "params": {"script": "true", **params}})
    return {p.path: p.message for p in info.value.problems}


@pytest.mark.parametrize("name", ["nobody", "www-data", "_apt", "Svc.User", "host$", "a" * 32])
def test_run_as_takes_user_names(name: str) -> None:
    """A user name as POSIX systems make them is saved as given."""
    params = {"script": "id", "run_as": name}
    assert (
        validate_task({"name": "t", "type": "run-script", "params": params}).params["run_as"]
        == name
    )


@pytest.mark.parametrize("name", ["root; rm -rf /", "-x", "1abc", "a b", "a" * 33, "dom\\user"])
def test_run_as_refuses_what_is_not_a_user_name(name: str) -> None:
    """Anything else is refused on save, by its field path, saying it is a user name."""
    message = _problems({"run_as": name})["params.run_as"]
    assert message.startswith("must match ") and "a user name" in message


def test_run_as_is_only_for_run_script_on_agents() -> None:
    """The NS and a TS do not switch users: their script types have no run_as."""
    for tid in ("run-script-on-server", "run-script-on-taskserver"):
        assert "unknown parameter" in _problems({"run_as": "nobody"}, tid)["params.run_as"]


@pytest.mark.parametrize("folder", ["/srv/app", "/", "C:\\app", "D:/data", "\\\\host\\share", ""])
def test_working_dir_takes_absolute_paths(folder: str) -> None:
    """POSIX and Windows absolute paths (and empty, the default) are saved."""
    for tid in ("run-script", "run-script-on-server", "run-script-on-taskserver"):
        params = {"script": "pwd", "working_dir": folder}
        saved = validate_task({"name": "t", "type": tid, "params": params})
        assert saved.params["working_dir"] == folder


@pytest.mark.parametrize("folder", ["relative/dir", "./x", "~/x", "C:app"])
def test_working_dir_refuses_relative_paths(folder: str) -> None:
    assert "an absolute folder path" in _problems({"working_dir": folder})["params.working_dir"]


def test_cwd_is_still_accepted_and_saved_as_working_dir() -> None:
    """A document written with cwd saves as working_dir; giving both names is a problem."""
    saved = validate_task(
        {"name": "t", "type": "run-script", "params": {"script": "pwd", "cwd": "/srv"}}
    )
    assert saved.params["working_dir"] == "/srv" and "cwd" not in saved.params
    problems = _problems({"cwd": "/a", "working_dir": "/b"})
    assert problems == {"params.cwd": "the old name of working_dir: give only working_dir"}


@pytest.mark.parametrize(
    ("text", "mac"),
    [
        ("02:FC:00:00:00:01", "02:fc:00:00:00:01"),
        ("00-11-22-aa-bb-cc", "00:11:22:aa:bb:cc"),
        ("001122aabbcc", "00:11:22:aa:bb:cc"),
        (" 00:11:22:aa:bb:cc\n", "00:11:22:aa:bb:cc"),
        ("00:00:00:00:00:00", ""),  # loopback, or no card
        ("01:00:5e:00:00:fb", ""),  # IPv4 multicast
        ("33:33:00:00:00:01", ""),  # IPv6 multicast
        ("ff:ff:ff:ff:ff:ff", ""),  # broadcast
        ("00:11:22:aa:bb", ""),
        ("00:11-22:aa:bb:cc", ""),
        ("00:11:22:aa:bb:cg", ""),
        (None, ""),
        (42, ""),
    ],
)
def test_unicast_mac(text: object, mac: str) -> None:
    """Six hex pairs with one separator (or none) that name one card, normalised; else empty."""
    assert unicast_mac(text) == mac


def test_inventory_mac_checks_the_agents_pick_then_its_list() -> None:
    """The inventory's own `mac` when it is valid, else the first valid of `macs`, else none."""
    assert inventory_mac({"mac": "02:fc:00:00:00:01", "macs": ["00:11:22:aa:bb:cc"]}) == (
        "02:fc:00:00:00:01"
    )
    macs = ["00:00:00:00:00:00", "01:00:5e:00:00:01", "00:11:22:AA:BB:CC"]
    assert inventory_mac({"mac": "ff:ff:ff:ff:ff:ff", "macs": macs}) == "00:11:22:aa:bb:cc"
    assert inventory_mac({"macs": ["00:00:00:00:00:00"]}) == ""
    assert inventory_mac({"mac": "", "macs": "00:11:22:aa:bb:cc"}) == ""
    assert inventory_mac(["00:11:22:aa:bb:cc"]) == ""
