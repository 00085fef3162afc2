"""Alembic environment: the engine is handed over by `junodcs.db.migrate`, never read from a file."""

from alembic import context

from junodcs.db.metadata import load_all_tables

target_metadata = load_all_tables()
engine = context.config.attributes["engine"]

with engine.begin() as connection:
    context.configure(connection=connection, target_metadata=target_metadata, render_as_batch=True)
    context.run_migrations()
