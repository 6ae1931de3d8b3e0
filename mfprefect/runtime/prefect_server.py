"""The local Prefect server's own process: Prefect's API and UI in one uvicorn.

The supervisor in local_server.py runs `python -m mfprefect.runtime.prefect_server --host H
--port P` where it used to run `prefect server start`: the same app (`create_app(final=True)`,
served by uvicorn the way Prefect's CLI serves it with one worker) without importing the CLI.

A fresh SQLite database is the largest part of a first start. Prefect migrates it at start-up
through its async engine: every one of about 34,000 statements hops from a worker thread to the
event loop to aiosqlite's thread and back, some 5 s of CPU. `prepare_database` runs the same
migration scripts (Prefect's alembic directory, with the options Prefect's env.py gives them)
over a synchronous SQLite connection, without fsync, into a file beside the database, and moves
the file into place only once it is at the head revision; Prefect's own start-up then finds
nothing to do. A database that exists already, or one that is not a local SQLite file, is left
to Prefect, and so is a fresh one if anything in the fast path fails.

Prefect opens most SQLite write transactions DEFERRED: they read first (a flow run's labels, say)
and only then write. When another writer commits in between, SQLite refuses the upgrade at once
with "database is locked", without waiting on its busy timeout; the API answers 503 and the
client tries again only after 2 s. Four runs started together lost 2 s that way, and 16
concurrent flow-run creations got 503 for nearly all but one. `write_transactions_wait` makes
every transaction Prefect begins take the write lock up front (BEGIN IMMEDIATE, which Prefect
already uses for state changes), so a second writer waits its turn inside SQLite instead.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import socket
import sys
import time
import warnings
from pathlib import Path
from typing import Any


def sqlite_file(url: str) -> Path | None:
    """The file of a local SQLite database URL, or None for anything else (Postgres, memory)."""
    from sqlalchemy.engine import make_url

    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite" or parsed.database in (None, "", ":memory:"):
        return None
    if str(parsed.database).startswith("file:") or parsed.query.get("mode") == "memory":
        return None
    return Path(str(parsed.database))


def migrate_file(path: Path, database_interface: Any) -> None:
    """Run Prefect's SQLite migrations up to head on a new database at `path`."""
    import sqlalchemy
    from alembic.runtime.environment import EnvironmentContext
    from alembic.script import ScriptDirectory
    from prefect.server.database.alembic_commands import alembic_config

    config = alembic_config()
    scripts = ScriptDirectory(
        ScriptDirectory.from_config(config).dir,
        version_locations=[str(database_interface.orm.versions_dir)],
    )

    def upgrade(revision: Any, _context: Any) -> Any:
        return scripts._upgrade_revs("head", revision)

    engine = sqlalchemy.create_engine(f"sqlite:///{path}")
    try:
        with engine.connect() as connection, warnings.catch_warnings():
            # Alembic's reflection cannot read expression indexes; Prefect silences this too.
            warnings.filterwarnings("ignore", message="Skipped unsupported reflection")
            # A half-written file is thrown away, never used: no journal and no fsync needed.
            connection.exec_driver_sql("PRAGMA journal_mode=MEMORY")
            connection.exec_driver_sql("PRAGMA synchronous=OFF")
            # As Prefect's env.py: batch migrations copy tables, which foreign keys would stop.
            connection.exec_driver_sql("PRAGMA foreign_keys=OFF")
            connection.exec_driver_sql("PRAGMA legacy_alter_table=OFF")  # as Prefect's engine
            # Alembic begins and ends its own transaction per migration (some need autocommit).
            connection.commit()
            environment = EnvironmentContext(config, scripts, fn=upgrade)
            environment.configure(
                connection=connection,
                target_metadata=database_interface.Base.metadata,
                include_schemas=True,
                render_as_batch=True,
                transaction_per_migration=True,
            )
            with environment.begin_transaction():
                environment.run_migrations()
            connection.commit()
            connection.exec_driver_sql("PRAGMA journal_mode=DELETE")
    finally:
        engine.dispose()


def prepare_database() -> bool:
    """Create the server's database quickly if it is a local SQLite file that does not exist
    yet; True if this did it (else Prefect migrates it at start-up, as usual). Either way it
    says so in the server's log."""
    from prefect.server.database import provide_database_interface

    database = provide_database_interface()
    path = sqlite_file(database.database_config.connection_url)
    if path is None or path.exists():
        return False
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".new")
    partial.unlink(missing_ok=True)
    started = time.monotonic()
    try:
        migrate_file(partial, database)
        os.replace(partial, path)
    except Exception as exc:  # noqa: BLE001 - Prefect's own migration is the fallback
        print(f"fast database set-up failed ({type(exc).__name__}: {exc}); Prefect migrates it")
        with contextlib.suppress(OSError):
            partial.unlink()
        return False
    print(f"database set up at head in {time.monotonic() - started:.1f} s", flush=True)
    return True


def write_transactions_wait() -> bool:
    """Make the SQLite transactions Prefect's server begins start with BEGIN IMMEDIATE; False
    (and nothing changed) if this Prefect's configuration class is not the one this expects."""
    import inspect

    from prefect.server.database.configurations import AioSqliteConfiguration

    deferred = AioSqliteConfiguration.begin_transaction
    if "with_for_update" not in inspect.signature(deferred).parameters:
        return False
    if getattr(deferred, "_mfprefect_immediate", False):
        return True

    def begin_transaction(self: Any, session: Any, with_for_update: bool = False) -> Any:
        # The flag only picks SQLite's BEGIN mode here; row locks are the queries' own.
        return deferred(self, session, with_for_update=True)

    begin_transaction._mfprefect_immediate = True  # type: ignore[attr-defined]
    AioSqliteConfiguration.begin_transaction = begin_transaction  # type: ignore[method-assign]
    return True


def serve(host: str, port: int) -> None:
    """Serve Prefect's API, UI and services on host:port until stopped (as its CLI does)."""
    import uvicorn
    from prefect.server.api.server import create_app
    from prefect.settings import (
        PREFECT_SERVER_API_KEEPALIVE_TIMEOUT,
        PREFECT_SERVER_API_WEBSOCKET_PING_INTERVAL,
        PREFECT_SERVER_API_WEBSOCKET_PING_TIMEOUT,
        PREFECT_SERVER_LOGGING_LEVEL,
    )

    prepare_database()
    if not write_transactions_wait():
        print("Prefect's SQLite transactions stay DEFERRED (unexpected configuration class)")
    uvicorn.run(
        app=create_app(final=True),
        host=host,
        port=port,
        timeout_keep_alive=PREFECT_SERVER_API_KEEPALIVE_TIMEOUT.value(),
        ws_ping_interval=PREFECT_SERVER_API_WEBSOCKET_PING_INTERVAL.value(),
        ws_ping_timeout=PREFECT_SERVER_API_WEBSOCKET_PING_TIMEOUT.value(),
        log_level=PREFECT_SERVER_LOGGING_LEVEL.value().lower(),
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mfprefect.runtime.prefect_server")
    parser.add_argument("--host", required=True)
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args(argv)
    # uvicorn would find a taken port only after the app's whole start-up, and say so inside a
    # traceback; the supervisor looks for these words to retry with another port.
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((args.host, args.port))
        except OSError as exc:
            print(f"port {args.port} is already in use ({exc.strerror})", file=sys.stderr)
            return 1
    serve(args.host, args.port)
    return 0


if __name__ == "__main__":
    sys.exit(main())
