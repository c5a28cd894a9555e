"""The collector's low watermarks, one per reader (see :mod:`exporter.ingest.cursor`).
"""

from __future__ import annotations

from exporter.state.schema import StateBase


class CursorState(StateBase):
    async def load_cursor(self, reader: str | None = None) -> float:
        """The low watermark of one reader (agno 3.x's is named like the state's source: older states)."""
        async with self.db.transaction() as conn:
            cur = await conn.execute(
                self._q("SELECT low_watermark FROM {s}.cursor WHERE source = %s"), (reader or self.source,)
            )
            row = await cur.fetchone()
        return float(row["low_watermark"]) if row else 0.0

    async def save_cursor(self, low: float, reader: str | None = None) -> None:
        async with self.db.transaction() as conn:
            await conn.execute(
                self._q(
                    "INSERT INTO {s}.cursor (source, low_watermark) VALUES (%s, %s) ON CONFLICT (source)"
                    " DO UPDATE SET low_watermark = EXCLUDED.low_watermark, updated_at = now()"
                ),
                (reader or self.source, low),
            )
