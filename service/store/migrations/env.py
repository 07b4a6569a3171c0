"""Alembic environment: online migrations against the URL handed over by service.store.engine.upgrade."""

from __future__ import annotations

from alembic import context

from service.store.engine import make_engine
from service.store.tables import Base

config = context.config
url = config.attributes.get("url") or config.get_main_option("sqlalchemy.url")
if not url:
    raise RuntimeError("no database URL given to the migrations")

engine = make_engine(url, create=True)  # the one step that may create a SQLite database
with engine.connect() as connection:
    context.configure(connection=connection, target_metadata=Base.metadata, render_as_batch=True)
    with context.begin_transaction():
        context.run_migrations()
    connection.commit()
engine.dispose()
