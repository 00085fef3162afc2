"""Conditions tables (SQLAlchemy Core), in the layout JUNO's JCDMS and CMS/CREST share.

* `cond_payloads`: immutable payloads keyed by their SHA-256 (hex), with a type, a size and either the
  bytes (`data`, LONGBLOB on MariaDB: conditions payloads exceed a plain BLOB's 64 KiB) or a `uri`.
* `cond_tags`: one payload type each, `time_type` `run` or `time`, lockable.
* `cond_iovs`: (tag, since, payload); validity runs until the next `since`; several IOVs may share a
  `since`: the latest insertion (highest `id`) wins.
* `cond_global_tags` (`open`, `locked`, `invalid`) and `cond_global_tag_map` (global tag, payload type)
  -> tag.
* `cond_changes`: last change time (microseconds since the epoch) of each table above, written in the
  same transaction as the change: the Frontier server's `Last-Modified` (Oracle Frontier's `change_time`
  table, the portable equivalent of MySQL's `information_schema.tables.update_time`).
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    DateTime,
    ForeignKey,
    Index,
    LargeBinary,
    PrimaryKeyConstraint,
    String,
    Table,
    Text,
)
from sqlalchemy.dialects import mysql

from junodcs.db.metadata import ID, metadata

BLOB = LargeBinary().with_variant(mysql.LONGBLOB(), "mysql", "mariadb")

payloads = Table(
    "cond_payloads",
    metadata,
    Column("hash", String(64), primary_key=True, comment="sha256 hex of the bytes"),
    Column("payload_type", String(128), nullable=False),
    Column("size", BigInteger, nullable=False),
    Column("data", BLOB, nullable=True),
    Column("uri", Text, nullable=True, comment="where the bytes live when not stored here"),
    Column("created_at", DateTime, nullable=False),
    Column("created_by", String(64), nullable=False),
)

tags = Table(
    "cond_tags",
    metadata,
    Column("name", String(128), primary_key=True),
    Column("payload_type", String(128), nullable=False),
    Column("time_type", String(8), nullable=False, comment="run or time"),
    Column("description", Text, nullable=False),
    Column("locked", Boolean, nullable=False),
    Column("created_at", DateTime, nullable=False),
    Column("created_by", String(64), nullable=False),
    Column("locked_at", DateTime, nullable=True),
)

iovs = Table(
    "cond_iovs",
    metadata,
    Column("id", ID, primary_key=True, autoincrement=True, comment="insertion order: the latest insertion wins"),
    Column("tag_name", String(128), ForeignKey("cond_tags.name"), nullable=False),
    Column("since", BigInteger, nullable=False, comment="first run (or UNIX second) of validity"),
    Column("payload_hash", String(64), ForeignKey("cond_payloads.hash"), nullable=False),
    Column("insertion_time", DateTime, nullable=False),
    Column("inserted_by", String(64), nullable=False),
    Index("ix_cond_iovs_tag_name_since", "tag_name", "since"),
)

global_tags = Table(
    "cond_global_tags",
    metadata,
    Column("name", String(128), primary_key=True),
    Column("status", String(16), nullable=False, comment="open, locked or invalid"),
    Column("description", Text, nullable=False),
    Column("created_at", DateTime, nullable=False),
    Column("created_by", String(64), nullable=False),
    Column("modified_at", DateTime, nullable=False),
)

global_tag_map = Table(
    "cond_global_tag_map",
    metadata,
    Column("global_tag", String(128), ForeignKey("cond_global_tags.name"), nullable=False),
    Column("payload_type", String(128), nullable=False),
    Column("tag_name", String(128), ForeignKey("cond_tags.name"), nullable=False),
    Column("added_at", DateTime, nullable=False),
    PrimaryKeyConstraint("global_tag", "payload_type"),
)

changes = Table(
    "cond_changes",
    metadata,
    Column("table_name", String(64), primary_key=True),
    Column("changed_us", BigInteger, nullable=False, comment="microseconds since the epoch"),
)

#: Tables the Frontier endpoint may read (its SQL whitelist); nothing else in the database is reachable.
FRONTIER_TABLES: dict[str, Table] = {t.name: t for t in (payloads, tags, iovs, global_tags, global_tag_map)}
