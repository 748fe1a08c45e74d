"""Migrations: numbered, forward-only, applied in one transaction under an advisory lock."""

from __future__ import annotations

from collections.abc import Callable

from .base import Database
from .sql import MIGRATIONS, Migration


class Migrations(Database):
    """Applying and reporting the schema's migrations."""

    def _migration_sql(self, migration: Migration) -> str:
        return migration.template.replace("{schema}", f'"{self.schema}"')

    async def applied_versions(self) -> list[int]:
        """Versions recorded in the migrations table (empty when the schema is new)."""
        async with self.pool.connection() as conn:
            cur = await conn.execute(
                self._sql["schema_exists"], {"table": f'"{self.schema}".migrations'}
            )
            row = await cur.fetchone()
            if not row or not row[0]:
                return []
            cur = await conn.execute(self._sql["migrations_applied"])
            return [r[0] for r in await cur.fetchall()]

    async def pending_sql(self) -> str:
        """The SQL that ``migrate`` would run now, for a DBA to read or run by hand."""
        applied = set(await self.applied_versions())
        parts = [self._sql["create_schema"] + ";", self._sql["migrations_bootstrap"] + ";"]
        record = self._sql["migrations_record_literal"]
        for m in MIGRATIONS:
            if m.version not in applied:
                parts.append(f"-- {m.version:04d}_{m.name}\n{self._migration_sql(m).strip()}")
                literal = record.replace("{version}", str(m.version)).replace("{name}", m.name)
                parts.append(literal + ";")
        return "\n\n".join(parts) + "\n"

    async def migrate(
        self, on_migration: Callable[[Migration, int, int], None] | None = None
    ) -> list[int]:
        """Apply pending migrations in one transaction under an advisory lock; returns them.
        ``on_migration(migration, index, total)`` is called before each one is applied (the CLI
        shows progress with it: a migration may build an index on a big table)."""
        async with self.pool.connection() as conn, conn.transaction():
            await conn.execute(self._sql["migrations_lock"], {"namespace": self.namespace})
            await conn.execute(self._sql["create_schema"])
            await conn.execute(self._sql["migrations_bootstrap"])
            cur = await conn.execute(self._sql["migrations_applied"])
            applied = {r[0] for r in await cur.fetchall()}
            done: list[int] = []
            pending = [m for m in MIGRATIONS if m.version not in applied]
            for m in pending:
                if on_migration is not None:
                    on_migration(m, len(done), len(pending))
                await conn.execute(self._migration_sql(m).encode())
                await conn.execute(
                    self._sql["migrations_record"], {"version": m.version, "name": m.name}
                )
                done.append(m.version)
            return done
