"""Workload management tables (SQLAlchemy Core).

* `wms_jobs` holds the attributes DIRAC's `Jobs` table holds (owner, group, status triple, site, times, counters)
  plus the scheduling columns: `tq_id` is set exactly while the job is Waiting in a task queue (the matcher picks
  from the `(tq_id, user_priority, id)` index), `lease_owner/lease_until` are the optimizers' claims.
  Job IDs come from `wms_counters` (one row update per bulk), so a bulk of 10,000 jobs is three executemany calls
  with the IDs known in advance, on all three databases.
* `wms_jdls` keeps each job's description (JSON of the JDL attributes after parametric expansion); rescheduling
  rebuilds the job from it (DIRAC's OriginalJDL).
* `wms_logging` is the full history (status, minor, application, time, source) of every attempt.
* `wms_parameters` (job, attempt, name): parameters of earlier attempts stay (DIRAC's AtticJobParameters).
* `wms_commands` are keyed by (job, attempt): a Kill for an earlier attempt never reaches a rescheduled run.
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Column,
    DateTime,
    Float,
    Index,
    Integer,
    PrimaryKeyConstraint,
    String,
    Table,
    Text,
    UniqueConstraint,
)

from junodcs.db.metadata import ID, metadata


counters = Table(
    "wms_counters",
    metadata,
    Column("name", String(32), primary_key=True),
    Column("value", BigInteger, nullable=False),
)

jobs = Table(
    "wms_jobs",
    metadata,
    Column("id", ID, primary_key=True, autoincrement=False),
    Column("bulk_id", ID, nullable=False, comment="ID of the first job of the submission"),
    Column("owner", String(64), nullable=False),
    Column("grp", String(64), nullable=False),
    Column("vo", String(32), nullable=False),
    Column("job_type", String(32), nullable=False),
    Column("job_group", String(128), nullable=False),
    Column("job_name", String(255), nullable=False),
    Column("status", String(16), nullable=False),
    Column("minor_status", String(255), nullable=False),
    Column("application_status", String(255), nullable=False),
    Column("site", String(64), nullable=True),
    Column("ce", String(128), nullable=True),
    Column("pilot_id", String(128), nullable=True),
    Column("user_priority", Integer, nullable=False),
    Column("cpu_time", Integer, nullable=False),
    Column("max_ram", Integer, nullable=True, comment="MB required now (memory-aware rescheduling raises it)"),
    Column("cores", Integer, nullable=False),
    Column("memory_limit", Integer, nullable=True, comment="MB of the slot the job was matched to"),
    Column("attempt", Integer, nullable=False),
    Column("reschedule_counter", Integer, nullable=False),
    Column("input_sandbox", String(64), nullable=True),
    Column("output_sandbox", String(64), nullable=True),
    Column("tq_id", ID, nullable=True),
    Column("submitted_at", DateTime, nullable=False),
    Column("updated_at", DateTime, nullable=False),
    Column("reschedule_time", DateTime, nullable=True),
    Column("matched_at", DateTime, nullable=True),
    Column("start_exec_time", DateTime, nullable=True),
    Column("heartbeat_time", DateTime, nullable=True),
    Column("end_exec_time", DateTime, nullable=True),
    Column("lease_owner", String(64), nullable=True),
    Column("lease_until", DateTime, nullable=True),
    Index("ix_wms_jobs_status_lease_until", "status", "lease_until"),
    Index("ix_wms_jobs_owner_status", "owner", "status"),
    Index("ix_wms_jobs_grp_status", "grp", "status"),
    Index("ix_wms_jobs_site_status", "site", "status"),
    Index("ix_wms_jobs_submitted_at", "submitted_at"),
    Index("ix_wms_jobs_job_group", "job_group"),
    Index("ix_wms_jobs_input_sandbox", "input_sandbox"),
)

# the matcher's pick: the first job of a queue by priority (highest first), then submission order
Index("ix_wms_jobs_tq_id_user_priority_id", jobs.c.tq_id, jobs.c.user_priority.desc(), jobs.c.id)

jdls = Table(
    "wms_jdls",
    metadata,
    Column("job_id", ID, primary_key=True, autoincrement=False),
    Column("jdl", Text, nullable=False, comment="JSON of the JDL attributes after expansion"),
)

logging = Table(
    "wms_logging",
    metadata,
    Column("id", ID, primary_key=True, autoincrement=True),
    Column("job_id", ID, nullable=False),
    Column("attempt", Integer, nullable=False),
    Column("status", String(16), nullable=False),
    Column("minor_status", String(255), nullable=False),
    Column("application_status", String(255), nullable=False),
    Column("time", DateTime, nullable=False),
    Column("source", String(32), nullable=False),
    Index("ix_wms_logging_job_id", "job_id"),
)

parameters = Table(
    "wms_parameters",
    metadata,
    Column("job_id", ID, nullable=False),
    Column("attempt", Integer, nullable=False),
    Column("name", String(64), nullable=False),
    Column("value", Text, nullable=False),
    PrimaryKeyConstraint("job_id", "attempt", "name"),
)

heartbeats = Table(
    "wms_heartbeats",
    metadata,
    Column("id", ID, primary_key=True, autoincrement=True),
    Column("job_id", ID, nullable=False),
    Column("attempt", Integer, nullable=False),
    Column("time", DateTime, nullable=False),
    Column("cpu", Float, nullable=False),
    Column("rss_mb", Float, nullable=False),
    Column("wall", Float, nullable=False),
    Index("ix_wms_heartbeats_job_id", "job_id"),
)

commands = Table(
    "wms_commands",
    metadata,
    Column("id", ID, primary_key=True, autoincrement=True),
    Column("job_id", ID, nullable=False),
    Column("attempt", Integer, nullable=False),
    Column("command", String(16), nullable=False),
    Column("reason", Text, nullable=False),
    Column("status", String(16), nullable=False, comment="Pending, Sent or Obsolete"),
    Column("created_at", DateTime, nullable=False),
    Column("sent_at", DateTime, nullable=True),
    Index("ix_wms_commands_job_id_attempt", "job_id", "attempt"),
)

task_queues = Table(
    "wms_task_queues",
    metadata,
    Column("id", ID, primary_key=True, autoincrement=True),
    Column("key_hash", String(40), nullable=False),
    Column("owner", String(64), nullable=False),
    Column("grp", String(64), nullable=False),
    Column("vo", String(32), nullable=False),
    Column("job_type", String(32), nullable=False),
    Column("cpu_time", Integer, nullable=False, comment="rounded up to DIRAC's ladder"),
    Column("platform", String(64), nullable=True),
    Column("tags", Text, nullable=False, comment="JSON list, all required"),
    Column("min_ram", Integer, nullable=True),
    Column("cores", Integer, nullable=False),
    Column("sites", Text, nullable=False, comment="JSON list of candidate sites"),
    Column("ces", Text, nullable=False, comment="JSON list; empty = any CE"),
    Column("created_at", DateTime, nullable=False),
    Column("updated_at", DateTime, nullable=False),
    UniqueConstraint("key_hash"),
)

pilots = Table(
    "wms_pilots",
    metadata,
    Column("id", String(128), primary_key=True),
    Column("site", String(64), nullable=False),
    Column("ce", String(128), nullable=False),
    Column("status", String(16), nullable=False),
    Column("first_seen", DateTime, nullable=False),
    Column("last_seen", DateTime, nullable=False),
    Column("jobs_matched", Integer, nullable=False),
    Column("current_job", ID, nullable=True),
    Column("reference", String(255), nullable=True, comment="the batch system's ID (CE job reference)"),
    Column("submitted_at", DateTime, nullable=True),
    Column("reason", String(255), nullable=True, comment="why the pilot ended as it did"),
    Index("ix_wms_pilots_ce_status", "ce", "status"),
)

pilot_output = Table(
    "wms_pilot_output",
    metadata,
    Column("pilot_id", String(128), primary_key=True),
    Column("output", Text, nullable=False, comment="the pilot's log (tail), retrieved by its site director"),
    Column("updated_at", DateTime, nullable=False),
)

pilot_jobs = Table(
    "wms_pilot_jobs",
    metadata,
    Column("job_id", ID, nullable=False),
    Column("attempt", Integer, nullable=False),
    Column("pilot_id", String(128), nullable=False),
    Column("matched_at", DateTime, nullable=False),
    PrimaryKeyConstraint("job_id", "attempt"),
    Index("ix_wms_pilot_jobs_pilot_id", "pilot_id"),
)

site_mask = Table(
    "wms_site_mask",
    metadata,
    Column("site", String(64), primary_key=True),
    Column("status", String(16), nullable=False),
    Column("reason", Text, nullable=False),
    Column("author", String(64), nullable=False),
    Column("updated_at", DateTime, nullable=False),
)

site_mask_log = Table(
    "wms_site_mask_log",
    metadata,
    Column("id", ID, primary_key=True, autoincrement=True),
    Column("site", String(64), nullable=False),
    Column("status", String(16), nullable=False),
    Column("reason", Text, nullable=False),
    Column("author", String(64), nullable=False),
    Column("time", DateTime, nullable=False),
    Index("ix_wms_site_mask_log_site", "site"),
)

sandboxes = Table(
    "wms_sandboxes",
    metadata,
    Column("hash", String(64), primary_key=True, comment="sha256 of the archive"),
    Column("size", BigInteger, nullable=False),
    Column("owner", String(64), nullable=False),
    Column("grp", String(64), nullable=False),
    Column("kind", String(8), nullable=False, comment="input or output"),
    Column("created_at", DateTime, nullable=False),
    Column("last_access", DateTime, nullable=False),
)
