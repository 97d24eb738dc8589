"""All SQL of the Notification Server, behind one narrow class: :class:`Store`.

A PostgreSQL store can stand beside this one later: nothing outside this package writes SQL.
Writes on the hot path (``apply_reports``, ``mark_dispatched``) are one transaction per batch.

``Store`` is one class assembled from one mixin per concern, each in its own module:

- ``schema``: the migrations (``_MIGRATIONS``), every table's definition.
- ``base``: ``StoreBase``, the connection, ``open``/``close`` and the query helpers.
- ``computers``: computers, task servers and presence; groups; inventory.
- ``catalog``: tasks and jobs, filters, reports and snapshots, policies; items and folders.
- ``runs``: runs, steps and instances: dispatch, the roll-up (``apply_reports``), ending
  them, purging old ones; the row types ``NewInstance``, ``Pending``, ``Parent``, ``Change``.
- ``trust``: peer keys, admins, enrolment tokens.
- ``journal``: the audit trail, messages, the server log.
- ``schedules``: schedules on the NS and their firings (each time recorded once).
- ``retention``: counting and purging old rows, a small batch per statement.
- ``hierarchy``: what a parent NS replicates to its children (the journal of changes, the
  children) and what a child took from its parent (items with an ``origin``).
- ``hiersummary``: a child NS's summary for its parent (computer counts, the parent's runs).

The parts import only ``base`` (which imports ``schema``), never each other nor this package.
"""

from __future__ import annotations

from server.store.catalog import ITEM_TABLES, CatalogMixin
from server.store.computers import ComputersMixin
from server.store.hierarchy import HierarchyMixin
from server.store.hiersummary import HierSummaryMixin
from server.store.journal import JournalMixin
from server.store.retention import RetentionMixin
from server.store.runs import Change, NewInstance, Parent, Pending, RunsMixin
from server.store.schedules import SchedulesMixin
from server.store.schema import _MIGRATIONS
from server.store.trust import TrustMixin

__all__ = [
    "ITEM_TABLES",
    "_MIGRATIONS",
    "Change",
    "NewInstance",
    "Parent",
    "Pending",
    "Store",
]


class Store(
    ComputersMixin,
    CatalogMixin,
    RunsMixin,
    TrustMixin,
    JournalMixin,
    SchedulesMixin,
    RetentionMixin,
    HierSummaryMixin,
    HierarchyMixin,
):
    """The NS database (SQLite, WAL). Open with :meth:`open`."""
