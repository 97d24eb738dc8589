"""A child NS's hello at a real parent (in-process, real sockets): the id it claims must be its
name and the fingerprint of the key it proves, or the loop check could be dodged by claiming
another NS's id."""

from __future__ import annotations

import pytest

from admin.client import AdminClient
from protocol.errors import RemoteError
from protocol.identity import fingerprint
from protocol.session import Role
from runtime.keys import load_or_create, public_bytes
from runtime.link import connect
from server.core import NotificationServer
from tests.helpers import INSECURE


async def child_token(ns: NotificationServer) -> str:
    async with AdminClient(ns.url, ns.first_admin_token or "", INSECURE) as c:
        return str((await c.call("tokens.create", uses=5, role="child"))["token"])


async def hello_as_child(ns: NotificationServer, tmp_path, ns_id: str) -> None:
    key = load_or_create(str(tmp_path / "site-a.key"))
    link, _ = await connect(
        ns.url,
        role=Role.CHILD,
        identity="site-a",
        credentials={"enrol_token": await child_token(ns)},
        key=key,
        trust=INSECURE,
        info={"ns_id": ns_id, "below": [], "url": "wss://127.0.0.1:1", "cursor": 0},
    )
    await link.close()


async def test_a_child_claiming_an_id_not_its_own_is_refused(ns, tmp_path):
    key = load_or_create(str(tmp_path / "site-a.key"))
    own = f"site-a:{fingerprint(public_bytes(key))}"
    await hello_as_child(ns, tmp_path, own)  # its own id: linked
    with pytest.raises(RemoteError) as refused:
        await hello_as_child(ns, tmp_path, f"elsewhere:{fingerprint(public_bytes(key))}")
    assert refused.value.code == "bad_hello"
    assert "name and key fingerprint" in refused.value.message
