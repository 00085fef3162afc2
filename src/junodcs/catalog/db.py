"""Catalog tables (SQLAlchemy Core; the hot paths are plain bulk statements).

Schema choices, made for cheap bulk registration and exact usage on three databases:

* `cat_dirs` is the directory tree (`parent_id`) with the full path stored once per directory and looked
  up through `path_hash` (SHA-1 hex): long LFNs never hit MariaDB's 3072-byte index-key limit.
* `cat_files` is keyed by `(dir_id, name)`; an LFN is its directory path + name, so files carry no path.
  Its GUID index takes the GUIDs the catalog assigns in time order (UUIDv7, `guids.py`), so bulk
  registration appends to it instead of writing a random page per file.
* `cat_replicas` is (file, SE): the URL is not stored but derived from the SE configuration.
* File metadata live in one narrow table per type (`cat_fmeta_int|float|str|date`, key `(file_id,
  field_id)`, one `(field_id, value)` index each): an insert touches one secondary index per value and a
  query term is an index range scan. Directory metadata (few rows) share one table with typed columns.
* `cat_usage` holds, for every directory, the recursive totals of its subtree per SE (`se = ''` is the
  logical total: files and bytes whatever their replicas), updated in the same transaction as each change.
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Column,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    PrimaryKeyConstraint,
    String,
    Table,
    Text,
    UniqueConstraint,
)

from junodcs.db.metadata import ID, metadata


dirs = Table(
    "cat_dirs",
    metadata,
    Column("id", ID, primary_key=True, autoincrement=True),
    Column("parent_id", ID, ForeignKey("cat_dirs.id"), nullable=True),
    Column("name", String(255), nullable=False),
    Column("path", Text, nullable=False),
    Column("path_hash", String(40), nullable=False),
    Column("depth", Integer, nullable=False),
    Column("owner", String(64), nullable=False),
    Column("grp", String(64), nullable=False),
    Column("mode", Integer, nullable=False),
    Column("created_at", DateTime, nullable=False),
    Column("modified_at", DateTime, nullable=False),
    UniqueConstraint("path_hash"),
    Index("ix_cat_dirs_parent_id_name", "parent_id", "name"),
)

files = Table(
    "cat_files",
    metadata,
    Column("id", ID, primary_key=True, autoincrement=True),
    Column("dir_id", ID, ForeignKey("cat_dirs.id"), nullable=False),
    Column("name", String(255), nullable=False),
    Column("size", BigInteger, nullable=False),
    Column("checksum", String(8), nullable=False),
    Column("guid", String(36), nullable=False),
    Column("owner", String(64), nullable=False),
    Column("grp", String(64), nullable=False),
    Column("mode", Integer, nullable=False),
    Column("status", String(16), nullable=False),
    Column("created_at", DateTime, nullable=False),
    Column("modified_at", DateTime, nullable=False),
    UniqueConstraint("dir_id", "name"),
    Index("ix_cat_files_guid", "guid"),
)

replicas = Table(
    "cat_replicas",
    metadata,
    Column("file_id", ID, ForeignKey("cat_files.id"), nullable=False),
    Column("se", String(64), nullable=False),
    Column("status", String(16), nullable=False),
    Column("created_at", DateTime, nullable=False),
    PrimaryKeyConstraint("file_id", "se"),
    Index("ix_cat_replicas_se", "se"),
    sqlite_with_rowid=False,
)

meta_fields = Table(
    "cat_meta_fields",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("name", String(64), nullable=False),
    Column("type", String(8), nullable=False),
    Column("level", String(4), nullable=False, comment="file or dir"),
    Column("created_at", DateTime, nullable=False),
    Column("created_by", String(64), nullable=False),
    UniqueConstraint("name"),
)

VALUE_TYPES = {"int": BigInteger, "float": Float, "string": String(128), "date": DateTime}


def _file_meta_table(kind: str) -> Table:
    return Table(
        f"cat_fmeta_{kind}",
        metadata,
        Column("file_id", ID, ForeignKey("cat_files.id"), nullable=False),
        Column("field_id", Integer, ForeignKey("cat_meta_fields.id"), nullable=False),
        Column("value", VALUE_TYPES[kind], nullable=False),
        PrimaryKeyConstraint("file_id", "field_id"),
        Index(f"ix_cat_fmeta_{kind}_field_id_value", "field_id", "value"),
        sqlite_with_rowid=False,
    )


file_meta = {kind: _file_meta_table(kind) for kind in ("int", "float", "string", "date")}

dir_meta = Table(
    "cat_dmeta",
    metadata,
    Column("dir_id", ID, ForeignKey("cat_dirs.id"), nullable=False),
    Column("field_id", Integer, ForeignKey("cat_meta_fields.id"), nullable=False),
    Column("v_int", BigInteger, nullable=True),
    Column("v_float", Float, nullable=True),
    Column("v_string", String(128), nullable=True),
    Column("v_date", DateTime, nullable=True),
    PrimaryKeyConstraint("dir_id", "field_id"),
    Index("ix_cat_dmeta_field_id", "field_id"),
    sqlite_with_rowid=False,
)

usage = Table(
    "cat_usage",
    metadata,
    Column("dir_id", ID, ForeignKey("cat_dirs.id"), nullable=False),
    Column("se", String(64), nullable=False, comment="'' = logical totals"),
    Column("files", BigInteger, nullable=False),
    Column("bytes", BigInteger, nullable=False),
    PrimaryKeyConstraint("dir_id", "se"),
    sqlite_with_rowid=False,
)

ancestry = Table(
    "cat_ancestry",
    metadata,
    Column("file_id", ID, ForeignKey("cat_files.id"), nullable=False),
    Column("ancestor_id", ID, ForeignKey("cat_files.id"), nullable=False),
    PrimaryKeyConstraint("file_id", "ancestor_id"),
    Index("ix_cat_ancestry_ancestor_id", "ancestor_id"),
    sqlite_with_rowid=False,
)

datasets = Table(
    "cat_datasets",
    metadata,
    Column("id", ID, primary_key=True, autoincrement=True),
    Column("name", String(255), nullable=False),
    Column("path", Text, nullable=False, comment="root directory the query is evaluated under"),
    Column("query", Text, nullable=False, comment="JSON form of the metadata query"),
    Column("status", String(16), nullable=False),
    Column("owner", String(64), nullable=False),
    Column("grp", String(64), nullable=False),
    Column("description", Text, nullable=False),
    Column("files", BigInteger, nullable=True),
    Column("bytes", BigInteger, nullable=True),
    Column("content_hash", String(64), nullable=True),
    Column("created_at", DateTime, nullable=False),
    Column("modified_at", DateTime, nullable=False),
    Column("frozen_at", DateTime, nullable=True),
    UniqueConstraint("name"),
)

dataset_files = Table(
    "cat_dataset_files",
    metadata,
    Column("dataset_id", ID, ForeignKey("cat_datasets.id"), nullable=False),
    Column("seq", Integer, nullable=False),
    Column("lfn", Text, nullable=False),
    Column("size", BigInteger, nullable=False),
    Column("checksum", String(8), nullable=False),
    PrimaryKeyConstraint("dataset_id", "seq"),
    sqlite_with_rowid=False,
)
