"""What happened, kept append-only and read newest first: the audit trail of admin actions,
the messages raised for operators, and the server log.
"""

from __future__ import annotations

import time
from typing import Any

from server.store.base import StoreBase


class JournalMixin(StoreBase):
    """Tables ``audit``, ``messages``, ``server_log``."""

    # -- audit trail --------------------------------------------------------------------

    async def audit(self, who: str, action: str, detail: str, outcome: str) -> None:
        await self.db.execute(
            "INSERT INTO audit(at, who, action, detail, outcome) VALUES (?, ?, ?, ?, ?)",
            (time.time(), who, action, detail, outcome),
        )

    async def audit_trail(
        self, limit: int, who: str = "", action: str = ""
    ) -> list[dict[str, Any]]:
        """The newest ``limit`` entries; ``who`` (exact) and ``action`` (a prefix: ``keys``
        matches ``keys.accept``) narrow them when given."""
        return await self._all(
            "SELECT * FROM audit WHERE (CAST(? AS TEXT)='' OR who=?)"
            " AND (CAST(? AS TEXT)='' OR substr(action, 1, length(CAST(? AS TEXT)))=?)"
            " ORDER BY id DESC LIMIT ?",
            (who, who, action, action, action, limit),
        )

    # -- messages -----------------------------------------------------------------------

    async def raise_message(self, severity: str, text: str, source: str) -> int:
        return await self._insert(
            "INSERT INTO messages(at, severity, text, source) VALUES (?, ?, ?, ?)",
            (time.time(), severity, text, source),
        )

    async def messages(self, limit: int) -> list[dict[str, Any]]:
        return await self._all("SELECT * FROM messages ORDER BY id DESC LIMIT ?", (limit,))

    # -- server log ---------------------------------------------------------------------

    async def write_log(self, level: str, message: str, source: str) -> int:
        return await self._insert(
            "INSERT INTO server_log(at, level, message, source) VALUES (?, ?, ?, ?)",
            (time.time(), level, message, source),
        )

    async def server_log(self, limit: int = 100) -> list[dict[str, Any]]:
        return await self._all("SELECT * FROM server_log ORDER BY id DESC LIMIT ?", (limit,))
