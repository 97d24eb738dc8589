"""The admin client: a lost connection is one kind of error for its callers."""

from __future__ import annotations

import pytest

from admin.client import AdminClient
from tests.helpers import INSECURE


async def test_a_call_on_a_closed_connection_raises_connection_error(ns):
    """A call made after the connection closed (the NS restarting its listeners, say) raises
    ConnectionError, as a call whose reply the close cut off does, not websockets' own
    ConnectionClosed."""
    async with AdminClient(ns.url, ns.first_admin_token, INSECURE) as c:
        assert isinstance(await c.call("runs.list"), list)
        assert c.link is not None
        await c.link.close()
        with pytest.raises(ConnectionError, match="connection to the server closed"):
            await c.call("runs.list")
