"""A run with nothing to run on says why, in words that fit what was asked."""

from __future__ import annotations

import pytest

from admin.client import AdminClient
from protocol.errors import RemoteError
from tests.helpers import INSECURE, task_doc


async def test_all_on_an_ns_with_no_computers_says_there_are_none(ns):
    async with AdminClient(ns.url, ns.first_admin_token, INSECURE) as c:
        await c.call("task.add", text=task_doc("hello", "echo hi"))
        with pytest.raises(RemoteError) as refused:
            await c.call("run.start", task="hello", all=True)
        assert refused.value.code == "no_targets"
        assert "has no computers yet" in refused.value.message
        with pytest.raises(RemoteError) as refused:
            await c.call("run.start", task="hello")
        assert "give --computer, --group or --filter NAME" in refused.value.message
