"""Alembic environment: run by ``spine_ui.services.store.migrate.upgrade`` on the store's own connection."""
from __future__ import annotations

from alembic import context
from sqlalchemy import create_engine

from spine_ui.services.store.models import Base

config = context.config
target_metadata = Base.metadata


def run() -> None:
    connection = config.attributes.get("connection")
    if connection is None:  # the alembic command line: the URL from the config
        engine = create_engine(config.get_main_option("sqlalchemy.url"))
        with engine.connect() as conn:
            _migrate(conn)
        engine.dispose()
    else:
        _migrate(connection)


def _migrate(connection) -> None:
    context.configure(connection=connection, target_metadata=target_metadata,
                      render_as_batch=connection.dialect.name == "sqlite")
    with context.begin_transaction():
        if connection.dialect.name == "postgresql":  # replicas starting together migrate one after the other
            connection.exec_driver_sql("SELECT pg_advisory_xact_lock(781340013)")
        context.run_migrations()


if context.is_offline_mode():
    raise SystemExit("offline (SQL script) migrations are not supported; run python -m spine_ui db upgrade")
run()
