"""The one SQLAlchemy `MetaData` that every system's tables live in.

Alembic compares migrations against it, and the naming convention gives every constraint a stable
name on SQLite, PostgreSQL and MariaDB alike, so later migrations can drop or alter them by name.
"""

from sqlalchemy import BigInteger, Integer, MetaData

NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

metadata = MetaData(naming_convention=NAMING_CONVENTION)

#: Integer primary keys: 64-bit on PostgreSQL and MariaDB, SQLite's INTEGER (its rowid alias) there.
ID = BigInteger().with_variant(Integer, "sqlite")


def load_all_tables() -> MetaData:
    """Import every system's `db` module so that `metadata` knows all tables (for Alembic and tests)."""
    import importlib
    import pkgutil

    import junodcs

    for module in pkgutil.walk_packages(junodcs.__path__, "junodcs."):
        if module.name.endswith(".db") and module.name != "junodcs.db":
            importlib.import_module(module.name)
    return metadata
