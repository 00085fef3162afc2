"""RMS tables: requests, their ordered operations and each operation's files (DIRAC's ReqDB)."""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.dialects import mysql

from junodcs.db.metadata import metadata

BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
#: microseconds on MariaDB too (leases and NotBefore are compared below the second)
Time = sa.DateTime().with_variant(mysql.DATETIME(fsp=6), "mysql", "mariadb")

requests = sa.Table(
    "rms_requests", metadata,
    sa.Column("request_id", BigId, primary_key=True, autoincrement=True),
    sa.Column("name", sa.String(255), nullable=False),
    sa.Column("owner", sa.String(64), nullable=False),
    sa.Column("owner_group", sa.String(64), nullable=True),
    sa.Column("job_id", sa.BigInteger, nullable=True),
    sa.Column("source_component", sa.String(64), nullable=True),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("error", sa.Text, nullable=True),
    sa.Column("created_at", Time, nullable=False),
    sa.Column("last_update", Time, nullable=False),
    sa.Column("not_before", Time, nullable=False, comment="earliest next execution"),
    sa.Column("executor", sa.String(255), nullable=True, comment="agent holding the lease"),
    sa.Column("lease_until", Time, nullable=True),
    sa.Column("claims", sa.Integer, nullable=False, default=0, comment="fencing counter: +1 per claim"),
    sa.UniqueConstraint("name"),
    sa.Index("ix_rms_requests_queue", "status", "not_before"),
    sa.Index("ix_rms_requests_owner", "owner"),
    sa.Index("ix_rms_requests_job", "job_id"),
)

operations = sa.Table(
    "rms_operations", metadata,
    sa.Column("operation_id", BigId, primary_key=True, autoincrement=True),
    sa.Column("request_id", BigId, sa.ForeignKey("rms_requests.request_id", ondelete="CASCADE"), nullable=False),
    sa.Column("position", sa.Integer, nullable=False),
    sa.Column("type", sa.String(32), nullable=False),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("arguments", sa.Text, nullable=True, comment="JSON"),
    sa.Column("source_se", sa.String(255), nullable=True),
    sa.Column("target_se", sa.Text, nullable=True, comment="comma-separated SE names"),
    sa.Column("error", sa.Text, nullable=True),
    sa.Column("transfer_job", sa.String(36), nullable=True, comment="transfer job of the current round"),
    sa.Column("transfer_round", sa.Integer, nullable=False, default=0),
    sa.Column("created_at", Time, nullable=False),
    sa.Column("last_update", Time, nullable=False),
    sa.Index("ix_rms_operations_request", "request_id", "position"),
)

files = sa.Table(
    "rms_files", metadata,
    sa.Column("file_id", BigId, primary_key=True, autoincrement=True),
    sa.Column("operation_id", BigId, sa.ForeignKey("rms_operations.operation_id", ondelete="CASCADE"),
              nullable=False),
    sa.Column("lfn", sa.String(1024), nullable=False),
    sa.Column("pfn", sa.Text, nullable=True),
    sa.Column("guid", sa.String(64), nullable=True),
    sa.Column("size", sa.BigInteger, nullable=True),
    sa.Column("checksum_type", sa.String(16), nullable=True),
    sa.Column("checksum", sa.String(64), nullable=True),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("attempt", sa.Integer, nullable=False, default=0),
    sa.Column("error", sa.Text, nullable=True),
    sa.Column("last_update", Time, nullable=False),
    sa.Index("ix_rms_files_operation", "operation_id"),
)
