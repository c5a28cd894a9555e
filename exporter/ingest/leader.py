"""High availability: replicas on one database elect a single active collector and scheduler.

The leader holds a session-level Postgres advisory lock on a connection of its own. When the leader
dies (kill -9 included) its session ends, Postgres releases the lock, and a standby takes it at its
next attempt (within one poll interval). A standby counts nothing, fires nothing and exports no
agno totals (so dashboards summing over instances never count twice); on promotion it reloads
the durable state, so totals continue exactly where the old leader left them.
"""

from __future__ import annotations

import logging

import psycopg

from exporter.db import Database

log = logging.getLogger("agno_exporter.leader")


class Leadership:
    def __init__(self, db: Database | None, key: int, scope: str) -> None:
        self.db = db  # None: HA off, always the leader
        self.key = key
        self.scope = scope
        self.is_leader = db is None

    async def check(self) -> bool:
        """Keep or try to take the lock; returns whether this replica leads now."""
        if self.db is None:
            return True
        try:
            conn = await self.db.conn()
            if self.is_leader:
                await conn.execute("SELECT 1")  # a dead session means the lock is gone
                return True
            cur = await conn.execute("SELECT pg_try_advisory_lock(%s, hashtext(%s)) AS ok", (self.key, self.scope))
            row = await cur.fetchone()
            if row and row["ok"]:
                self.is_leader = True
                log.info("this replica is now the leader for %s", self.scope)
        except (psycopg.Error, OSError) as exc:
            if self.is_leader:
                log.warning("leadership lost (%s): standing by", str(exc).strip())
            self.is_leader = False
            await self.db.close()
        return self.is_leader

    async def release(self) -> None:
        if self.db is not None:
            await self.db.close()  # ending the session releases the lock
            self.is_leader = False
