"""Transfer tables (FTS3's t_job, t_file, t_file_retry_errors, t_link_config, t_se, t_optimizer,
t_optimizer_evolution, t_share_config/t_activity_share_config) plus the HTTP-TPC test matrix."""

from __future__ import annotations

import sqlalchemy as sa

from junodcs.db.metadata import metadata

BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")

jobs = sa.Table(
    "fts_jobs", metadata,
    sa.Column("job_id", sa.String(36), primary_key=True),
    sa.Column("job_state", sa.String(16), nullable=False),
    sa.Column("job_type", sa.String(1), nullable=False),
    sa.Column("source_se", sa.String(255), nullable=True),
    sa.Column("dest_se", sa.String(255), nullable=True),
    sa.Column("user_dn", sa.String(1024), nullable=False),
    sa.Column("username", sa.String(64), nullable=True),
    sa.Column("grp", sa.String(64), nullable=True),
    sa.Column("vo_name", sa.String(64), nullable=False),
    sa.Column("submit_host", sa.String(255), nullable=False),
    sa.Column("submit_time", sa.DateTime, nullable=False),
    sa.Column("job_finished", sa.DateTime, nullable=True),
    sa.Column("reason", sa.Text, nullable=True),
    sa.Column("priority", sa.Integer, nullable=False),
    sa.Column("verify_checksum", sa.String(1), nullable=False),
    sa.Column("overwrite_flag", sa.Boolean, nullable=False),
    sa.Column("retry", sa.Integer, nullable=False),
    sa.Column("retry_delay", sa.Integer, nullable=False),
    sa.Column("bring_online", sa.Integer, nullable=False),
    sa.Column("copy_pin_lifetime", sa.Integer, nullable=False),
    sa.Column("archive_timeout", sa.Integer, nullable=False),
    sa.Column("max_time_in_queue", sa.Integer, nullable=True),
    sa.Column("timeout", sa.Integer, nullable=True),
    sa.Column("transfer_mode", sa.String(8), nullable=True),
    sa.Column("job_metadata", sa.Text, nullable=True),
    sa.Column("internal_job_params", sa.Text, nullable=True),
    sa.Column("cancel_job", sa.Boolean, nullable=False, default=False),
    sa.Index("ix_fts_jobs_state_submit", "job_state", "submit_time"),
    sa.Index("ix_fts_jobs_username", "username"),
)

files = sa.Table(
    "fts_files", metadata,
    sa.Column("file_id", BigId, primary_key=True, autoincrement=True),
    sa.Column("job_id", sa.String(36), sa.ForeignKey("fts_jobs.job_id", ondelete="CASCADE"), nullable=False),
    sa.Column("file_index", sa.Integer, nullable=False),
    sa.Column("vo_name", sa.String(64), nullable=False),
    sa.Column("activity", sa.String(255), nullable=False),
    sa.Column("priority", sa.Integer, nullable=False),
    sa.Column("source_se", sa.String(255), nullable=False),
    sa.Column("dest_se", sa.String(255), nullable=False),
    sa.Column("source_surl", sa.Text, nullable=False),
    sa.Column("dest_surl", sa.Text, nullable=False),
    sa.Column("file_state", sa.String(16), nullable=False),
    sa.Column("reason", sa.Text, nullable=True),
    sa.Column("recoverable", sa.Boolean, nullable=True),
    sa.Column("filesize", sa.BigInteger, nullable=True),
    sa.Column("user_filesize", sa.BigInteger, nullable=True),
    sa.Column("checksum", sa.String(100), nullable=True),
    sa.Column("submit_time", sa.DateTime, nullable=False),
    sa.Column("start_time", sa.DateTime, nullable=True),
    sa.Column("finish_time", sa.DateTime, nullable=True),
    sa.Column("tx_duration", sa.Float, nullable=True),
    sa.Column("throughput", sa.Float, nullable=True, comment="MB/s"),
    sa.Column("retry", sa.Integer, nullable=False, default=0),
    sa.Column("attempt", sa.Integer, nullable=False, default=0, comment="fencing counter: +1 per claim"),
    sa.Column("next_attempt", sa.DateTime, nullable=True, comment="not before (retry delay)"),
    sa.Column("transfer_host", sa.String(255), nullable=True, comment="worker holding the lease"),
    sa.Column("lease_until", sa.DateTime, nullable=True),
    sa.Column("transfer_mode", sa.String(8), nullable=True),
    sa.Column("staging_start", sa.DateTime, nullable=True),
    sa.Column("staging_finished", sa.DateTime, nullable=True),
    sa.Column("bringonline_token", sa.String(255), nullable=True),
    sa.Column("archive_start_time", sa.DateTime, nullable=True),
    sa.Column("archive_finish_time", sa.DateTime, nullable=True),
    sa.Column("file_metadata", sa.Text, nullable=True),
    sa.Column("staging_metadata", sa.Text, nullable=True),
    sa.Column("archive_metadata", sa.Text, nullable=True),
    sa.Column("src_token", sa.Text, nullable=True),
    sa.Column("dst_token", sa.Text, nullable=True),
    sa.Column("hashed_id", sa.Integer, nullable=False),
    sa.Index("ix_fts_files_job", "job_id", "file_index"),
    sa.Index("ix_fts_files_finish", "finish_time"),
)
# The claim's index (see `TransferService.claim`): the queue's shape is an index-only scan and the next files
# of one (link, VO, activity) come out of it in priority order. Migration 0008 creates it; MariaDB indexes at
# most 3072 bytes, so there the long strings are indexed by a prefix.
sa.Index("ix_fts_files_claim", files.c.file_state, files.c.source_se, files.c.dest_se, files.c.vo_name,
         files.c.activity, files.c.priority.desc(), files.c.file_id, files.c.next_attempt)

retry_errors = sa.Table(
    "fts_file_retry_errors", metadata,
    sa.Column("id", BigId, primary_key=True, autoincrement=True),
    sa.Column("file_id", BigId, sa.ForeignKey("fts_files.file_id", ondelete="CASCADE"), nullable=False),
    sa.Column("attempt", sa.Integer, nullable=False),
    sa.Column("datetime", sa.DateTime, nullable=False),
    sa.Column("reason", sa.Text, nullable=False),
    sa.Column("transfer_host", sa.String(255), nullable=True),
    sa.Index("ix_fts_file_retry_errors_file", "file_id"),
)

links = sa.Table(
    "fts_link_config", metadata,
    sa.Column("source_se", sa.String(255), primary_key=True),
    sa.Column("dest_se", sa.String(255), primary_key=True),
    sa.Column("symbolic_name", sa.String(255), nullable=False, unique=True),
    sa.Column("min_active", sa.Integer, nullable=False),
    sa.Column("max_active", sa.Integer, nullable=False),
    sa.Column("optimizer_mode", sa.Integer, nullable=False),
    sa.Column("nostreams", sa.Integer, nullable=True),
    sa.Column("tcp_buffer_size", sa.Integer, nullable=True),
    sa.Column("tpc_mode", sa.String(8), nullable=True),
)

ses = sa.Table(
    "fts_se", metadata,
    sa.Column("storage", sa.String(255), primary_key=True),
    sa.Column("inbound_max_active", sa.Integer, nullable=True),
    sa.Column("outbound_max_active", sa.Integer, nullable=True),
    sa.Column("inbound_max_throughput", sa.Float, nullable=True),
    sa.Column("outbound_max_throughput", sa.Float, nullable=True),
    sa.Column("tpc_mode", sa.String(8), nullable=True),
)

shares = sa.Table(
    "fts_shares", metadata,
    sa.Column("vo", sa.String(64), primary_key=True),
    sa.Column("activity", sa.String(255), primary_key=True, comment="'*' = the VO's share between VOs"),
    sa.Column("weight", sa.Float, nullable=False),
)

optimizer = sa.Table(
    "fts_optimizer", metadata,
    sa.Column("source_se", sa.String(255), primary_key=True),
    sa.Column("dest_se", sa.String(255), primary_key=True),
    sa.Column("datetime", sa.DateTime, nullable=False),
    sa.Column("ema", sa.Float, nullable=False),
    sa.Column("active", sa.Integer, nullable=False),
    sa.Column("success", sa.Float, nullable=False),
    sa.Column("retries", sa.Integer, nullable=False),
    sa.Column("filesize_avg", sa.Float, nullable=False),
)

optimizer_evolution = sa.Table(
    "fts_optimizer_evolution", metadata,
    sa.Column("id", BigId, primary_key=True, autoincrement=True),
    sa.Column("source_se", sa.String(255), nullable=False),
    sa.Column("dest_se", sa.String(255), nullable=False),
    sa.Column("datetime", sa.DateTime, nullable=False),
    sa.Column("ema", sa.Float, nullable=False),
    sa.Column("active", sa.Integer, nullable=False),
    sa.Column("throughput", sa.Float, nullable=False),
    sa.Column("success", sa.Float, nullable=False),
    sa.Column("filesize_avg", sa.Float, nullable=False),
    sa.Column("filesize_stddev", sa.Float, nullable=False),
    sa.Column("actual_active", sa.Integer, nullable=False),
    sa.Column("queue_size", sa.Integer, nullable=False),
    sa.Column("rationale", sa.Text, nullable=False),
    sa.Column("diff", sa.Integer, nullable=False),
    sa.Index("ix_fts_optimizer_evolution_link", "source_se", "dest_se", "datetime"),
)

test_matrix = sa.Table(
    "fts_test_matrix", metadata,
    sa.Column("id", BigId, primary_key=True, autoincrement=True),
    sa.Column("source", sa.String(255), nullable=False),
    sa.Column("destination", sa.String(255), nullable=False),
    sa.Column("mode", sa.String(8), nullable=False),
    sa.Column("datetime", sa.DateTime, nullable=False),
    sa.Column("ok", sa.Boolean, nullable=False),
    sa.Column("size", sa.BigInteger, nullable=False),
    sa.Column("duration", sa.Float, nullable=True),
    sa.Column("rate", sa.Float, nullable=True, comment="MB/s"),
    sa.Column("error", sa.Text, nullable=True),
    sa.Index("ix_fts_test_matrix_pair", "source", "destination", "mode", "datetime"),
)
