"""Trust: peers' public keys and their acceptance, admins' tokens and roles, enrolment tokens."""

from __future__ import annotations

import time
from typing import Any

from server.store.base import StoreBase


class TrustMixin(StoreBase):
    """Tables ``keys``, ``admins``, ``enrol_tokens``."""

    async def key(self, role: str, name: str) -> dict[str, Any] | None:
        return await self._one("SELECT * FROM keys WHERE role=? AND name=?", (role, name))

    async def keys(self) -> list[dict[str, Any]]:
        return await self._all(
            "SELECT role, name, fingerprint, state, address, created_at, decided_at FROM keys ORDER BY role, name"
        )

    async def put_key(
        self, role: str, name: str, public_key: bytes, fingerprint: str, state: str, address: str
    ) -> None:
        now = time.time()
        await self.db.execute(
            "INSERT INTO keys(role, name, public_key, fingerprint, state, address, created_at, decided_at)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT(role, name) DO UPDATE SET"
            " public_key=excluded.public_key, fingerprint=excluded.fingerprint, state=excluded.state,"
            " address=excluded.address, decided_at=excluded.decided_at",
            (
                role,
                name,
                public_key,
                fingerprint,
                state,
                address,
                now,
                None if state == "pending" else now,
            ),
        )

    async def decide_keys(
        self, names: list[str] | None, state: str, *, only_pending: bool = True
    ) -> list[dict[str, Any]]:
        """Accept or reject keys by name (None: every pending key); return the keys changed
        (role, name, fingerprint, address), by name."""
        where = "state='pending'" if only_pending else "1=1"
        async with self.db.transaction():
            rows = await self._all(
                f"SELECT role, name, fingerprint, address FROM keys WHERE {where}"
            )
            chosen = [r for r in rows if names is None or r["name"] in names]
            await self.db.executemany(
                "UPDATE keys SET state=?, decided_at=? WHERE role=? AND name=?",
                [(state, time.time(), r["role"], r["name"]) for r in chosen],
            )
        return sorted(chosen, key=lambda r: (r["name"], r["role"]))

    async def delete_keys(self, name: str) -> list[str]:
        """Forget every key called ``name``; return their roles."""
        async with self.db.transaction():
            rows = await self._all("SELECT role FROM keys WHERE name=?", (name,))
            await self.db.execute("DELETE FROM keys WHERE name=?", (name,))
        return sorted(r["role"] for r in rows)

    async def pending_keys(self) -> int:
        row = await self._one("SELECT count(*) AS n FROM keys WHERE state='pending'")
        return int(row["n"]) if row else 0

    async def add_admin(self, name: str, role: str, token_hash: str) -> None:
        await self.db.execute(
            "INSERT INTO admins(name, role, token_hash, created_at) VALUES (?, ?, ?, ?)"
            " ON CONFLICT(name) DO UPDATE SET role=excluded.role, token_hash=excluded.token_hash,"
            " created_at=excluded.created_at, revoked_at=NULL",
            (name, role, token_hash, time.time()),
        )

    async def admin_by_token(self, token_hash: str) -> dict[str, Any] | None:
        return await self._one(
            "SELECT name, role FROM admins WHERE token_hash=? AND revoked_at IS NULL", (token_hash,)
        )

    async def admins(self) -> list[dict[str, Any]]:
        return await self._all(
            "SELECT name, role, created_at, revoked_at FROM admins ORDER BY name"
        )

    async def revoke_admin(self, name: str) -> bool:
        changed = await self.db.execute(
            "UPDATE admins SET revoked_at=? WHERE name=? AND revoked_at IS NULL",
            (time.time(), name),
        )
        return changed > 0

    async def add_enrol_token(
        self, token_hash: str, uses: int, expires_at: float, created_by: str, role: str = "agent"
    ) -> int:
        return await self._insert(
            "INSERT INTO enrol_tokens(token_hash, uses_left, expires_at, created_at, created_by, role)"
            " VALUES (?, ?, ?, ?, ?, ?)",
            (token_hash, uses, expires_at, time.time(), created_by, role),
        )

    async def enrol_with_token(
        self, token_hash: str, role: str, name: str, key: bytes, fingerprint: str, address: str
    ) -> str | None:
        """Spend one use of an enrolment token made for ``role`` and accept the key, in one
        transaction; return why the token cannot be used, or None.

        One conditional UPDATE: concurrent enrolments can never spend more uses than there are,
        and a token for another role, a revoked or an expired one spends nothing. The key is
        stored in the same commit, so a use is never spent without its key (a handshake cut in
        between would otherwise cost a use per retry).
        """
        async with self.db.transaction():
            spent = (
                await self.db.execute(
                    "UPDATE enrol_tokens SET uses_left=uses_left-1"
                    " WHERE token_hash=? AND role=? AND revoked_at IS NULL AND uses_left>0"
                    " AND expires_at>=?",
                    (token_hash, role, time.time()),
                )
                == 1
            )
            if spent:  # the key in the same transaction
                await self.put_key(role, name, key, fingerprint, "accepted", address)
        if spent:
            return None
        row = await self._one(
            "SELECT id, role, revoked_at, uses_left, expires_at FROM enrol_tokens WHERE token_hash=?",
            (token_hash,),
        )
        if row is None:
            return "unknown enrolment token"
        if row["revoked_at"] is not None:
            return f"enrolment token #{row['id']} was revoked"
        if row["role"] != role:
            return (
                f"enrolment token #{row['id']} is for {_ROLE_WORDS.get(row['role'], row['role'])},"
                f" not {_ROLE_WORDS.get(role, role)}"
            )
        if row["expires_at"] < time.time():
            return "the enrolment token has expired"
        return "the enrolment token is used up"

    async def enrol_tokens(self) -> list[dict[str, Any]]:
        return await self._all(
            "SELECT id, role, uses_left, expires_at, created_at, created_by, revoked_at"
            " FROM enrol_tokens ORDER BY id"
        )

    async def revoke_enrol_token(self, token_id: int) -> bool:
        """Revoke an enrolment token (it enrols no one from now on); False if there is no such
        token or it was revoked before."""
        changed = await self.db.execute(
            "UPDATE enrol_tokens SET revoked_at=? WHERE id=? AND revoked_at IS NULL",
            (time.time(), token_id),
        )
        return changed > 0

    async def revoke_tickets(self, agent: str, until: int) -> None:
        """Remember that the tickets of ``agent`` expiring at or before ``until`` are void (its
        key was rejected or deleted); forget what expired."""
        async with self.db.transaction():
            await self.db.execute("DELETE FROM revoked_tickets WHERE until<?", (int(time.time()),))
            await self.db.execute(
                "INSERT INTO revoked_tickets(agent, until) VALUES (?, ?)"
                " ON CONFLICT(agent) DO UPDATE SET until=CASE"
                " WHEN excluded.until > revoked_tickets.until THEN excluded.until"
                " ELSE revoked_tickets.until END",
                (agent, until),
            )

    async def revoked_tickets(self) -> dict[str, int]:
        """The void tickets still in force: agent → the last expiry voided."""
        rows = await self._all(
            "SELECT agent, until FROM revoked_tickets WHERE until>=?", (int(time.time()),)
        )
        return {r["agent"]: int(r["until"]) for r in rows}


_ROLE_WORDS = {"agent": "agents", "taskserver": "task servers"}
