"""Each task type in the protocol catalog runs somewhere: one runner in its own role's catalog."""

from __future__ import annotations

from agent.tasktypes import RUNNERS
from protocol.tasks import CATALOG, Kind
from server.tasktypes import SERVER_RUNNERS
from taskserver.tasktypes import TS_RUNNERS


def test_every_type_has_exactly_one_runner_in_its_roles_catalog() -> None:
    """Client types run on agents, server types on the NS, task-server types on a TS; no type is
    missing a runner and no runner is registered for a type the catalog does not know."""
    by_kind = {Kind.CLIENT: RUNNERS, Kind.SERVER: SERVER_RUNNERS, Kind.TASKSERVER: TS_RUNNERS}
    for tid, ttype in CATALOG.items():
        homes = [kind for kind, runners in by_kind.items() if tid in runners]
        assert homes == [ttype.kind], f"{tid}: runners in {homes}, kind {ttype.kind}"
    assert set(RUNNERS) | set(SERVER_RUNNERS) | set(TS_RUNNERS) == set(CATALOG)
