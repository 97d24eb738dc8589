"""Clients given the addresses of two NS (``--server URL1,URL2``, ``runtime.servers``): they
connect to the one that answers, start the next round with it, take an NS's own refusal as the
answer, and read the pair from a configuration file as a string or an array."""

from __future__ import annotations

import asyncio

import pytest

from admin.cli import build_parser
from admin.client import AdminClient, url_problem
from protocol.errors import RemoteError
from runtime.servers import ServerList
from server.core import NotificationServer
from tests.helpers import INSECURE, free_port


def dead_url() -> str:
    """An address where nothing listens (a standby NS's port refuses the same way)."""
    return f"ws://127.0.0.1:{free_port()}"


async def test_an_admin_given_two_addresses_reaches_the_one_that_answers(ns):
    dead = dead_url()
    async with AdminClient(f"{dead},{ns.url}", ns.first_admin_token, INSECURE) as c:
        assert await c.call("computers.list") == []
        assert c.servers.current == ns.url
        assert c.servers.order() == [ns.url, dead], "the next round starts with the one that worked"


async def test_a_refusal_by_the_ns_itself_ends_the_round(ns):
    """A wrong token is the active NS's answer: raised as it is, not hidden by the next address
    being unreachable."""
    with pytest.raises(RemoteError):
        async with AdminClient(f"{ns.url},{dead_url()}", "not-a-token", INSECURE):
            pass


async def test_when_no_address_answers_the_error_says_so():
    with pytest.raises(ConnectionRefusedError):
        async with AdminClient(f"{dead_url()},{dead_url()}", "t", INSECURE, busy_retry_s=0):
            pass


def test_the_list_keeps_its_order_and_spaces_do_not_matter():
    servers = ServerList(" wss://a:1 , wss://b:2 ")
    assert servers.urls == ("wss://a:1", "wss://b:2") and str(servers) == "wss://a:1,wss://b:2"
    servers.worked("wss://b:2")
    assert servers.order() == ["wss://b:2", "wss://a:1"]


def test_each_address_of_a_pair_is_checked():
    assert url_problem("wss://a:1,wss://b:2") is None
    assert "empty address" in (url_problem("wss://a:1,") or "")
    assert "https://" in (url_problem("wss://a:1,https://b:2") or "")


def test_a_configuration_file_gives_the_pair_as_an_array_or_a_string(tmp_path, monkeypatch):
    monkeypatch.setenv("TASKFLEET_CONFIG_DIR", str(tmp_path / "no-such-dir"))
    for text in ('server = ["wss://a:1", "wss://b:2"]\n', 'server = "wss://a:1,wss://b:2"\n'):
        conf = tmp_path / "agent.toml"
        conf.write_text(text + f'data = "{tmp_path}/agent"\n')
        args = build_parser().parse_args(["agent", "--config", str(conf)])
        assert args.server == "wss://a:1,wss://b:2"


async def test_an_admin_waits_while_a_pair_changes_hands(tmp_path):
    """Both addresses refuse (the active one gone, the standby not yet serving): the admin
    keeps trying, and gets through once one of them serves."""
    port = free_port()
    first = NotificationServer(data_dir=str(tmp_path / "ns"), insecure=True, port=port)
    await first.start()
    token = first.first_admin_token
    assert token is not None
    await first.stop()
    later = NotificationServer(data_dir=str(tmp_path / "ns"), insecure=True, port=port)

    async def takes_over() -> None:
        await asyncio.sleep(1.0)
        await later.start()

    coming = asyncio.create_task(takes_over())
    try:
        async with AdminClient(f"{dead_url()},ws://127.0.0.1:{port}", token, INSECURE) as c:
            assert await c.call("computers.list") == []
        assert coming.done(), "connected before anything served"
    finally:
        await coming
        await later.stop()
