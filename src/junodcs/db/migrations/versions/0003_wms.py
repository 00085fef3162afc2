"""Workload management: jobs, JDLs, logging, parameters, heartbeats, commands, task queues, pilots,
site mask, sandboxes.

Revision ID: 0003_wms
Revises: 0002_catalog
Create Date: 2025-01-03
"""

import sqlalchemy as sa
from alembic import op


revision = '0003_wms'
down_revision = '0002_catalog'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('wms_commands',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), autoincrement=True, nullable=False),
    sa.Column('job_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('attempt', sa.Integer(), nullable=False),
    sa.Column('command', sa.String(length=16), nullable=False),
    sa.Column('reason', sa.Text(), nullable=False),
    sa.Column('status', sa.String(length=16), nullable=False, comment='Pending, Sent or Obsolete'),
    sa.Column('created_at', sa.DateTime(), nullable=False),
    sa.Column('sent_at', sa.DateTime(), nullable=True),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_wms_commands'))
    )
    with op.batch_alter_table('wms_commands', schema=None) as batch_op:
        batch_op.create_index('ix_wms_commands_job_id_attempt', ['job_id', 'attempt'], unique=False)

    op.create_table('wms_counters',
    sa.Column('name', sa.String(length=32), nullable=False),
    sa.Column('value', sa.BigInteger(), nullable=False),
    sa.PrimaryKeyConstraint('name', name=op.f('pk_wms_counters'))
    )
    op.create_table('wms_heartbeats',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), autoincrement=True, nullable=False),
    sa.Column('job_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('attempt', sa.Integer(), nullable=False),
    sa.Column('time', sa.DateTime(), nullable=False),
    sa.Column('cpu', sa.Float(), nullable=False),
    sa.Column('rss_mb', sa.Float(), nullable=False),
    sa.Column('wall', sa.Float(), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_wms_heartbeats'))
    )
    with op.batch_alter_table('wms_heartbeats', schema=None) as batch_op:
        batch_op.create_index('ix_wms_heartbeats_job_id', ['job_id'], unique=False)

    op.create_table('wms_jdls',
    sa.Column('job_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), autoincrement=False, nullable=False),
    sa.Column('jdl', sa.Text(), nullable=False, comment='JSON of the JDL attributes after expansion'),
    sa.PrimaryKeyConstraint('job_id', name=op.f('pk_wms_jdls'))
    )
    op.create_table('wms_jobs',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), autoincrement=False, nullable=False),
    sa.Column('bulk_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False, comment='ID of the first job of the submission'),
    sa.Column('owner', sa.String(length=64), nullable=False),
    sa.Column('grp', sa.String(length=64), nullable=False),
    sa.Column('vo', sa.String(length=32), nullable=False),
    sa.Column('job_type', sa.String(length=32), nullable=False),
    sa.Column('job_group', sa.String(length=128), nullable=False),
    sa.Column('job_name', sa.String(length=255), nullable=False),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('minor_status', sa.String(length=255), nullable=False),
    sa.Column('application_status', sa.String(length=255), nullable=False),
    sa.Column('site', sa.String(length=64), nullable=True),
    sa.Column('ce', sa.String(length=128), nullable=True),
    sa.Column('pilot_id', sa.String(length=128), nullable=True),
    sa.Column('user_priority', sa.Integer(), nullable=False),
    sa.Column('cpu_time', sa.Integer(), nullable=False),
    sa.Column('max_ram', sa.Integer(), nullable=True, comment='MB required now (memory-aware rescheduling raises it)'),
    sa.Column('cores', sa.Integer(), nullable=False),
    sa.Column('memory_limit', sa.Integer(), nullable=True, comment='MB of the slot the job was matched to'),
    sa.Column('attempt', sa.Integer(), nullable=False),
    sa.Column('reschedule_counter', sa.Integer(), nullable=False),
    sa.Column('input_sandbox', sa.String(length=64), nullable=True),
    sa.Column('output_sandbox', sa.String(length=64), nullable=True),
    sa.Column('tq_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=True),
    sa.Column('submitted_at', sa.DateTime(), nullable=False),
    sa.Column('updated_at', sa.DateTime(), nullable=False),
    sa.Column('reschedule_time', sa.DateTime(), nullable=True),
    sa.Column('matched_at', sa.DateTime(), nullable=True),
    sa.Column('start_exec_time', sa.DateTime(), nullable=True),
    sa.Column('heartbeat_time', sa.DateTime(), nullable=True),
    sa.Column('end_exec_time', sa.DateTime(), nullable=True),
    sa.Column('lease_owner', sa.String(length=64), nullable=True),
    sa.Column('lease_until', sa.DateTime(), nullable=True),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_wms_jobs'))
    )
    with op.batch_alter_table('wms_jobs', schema=None) as batch_op:
        batch_op.create_index('ix_wms_jobs_grp_status', ['grp', 'status'], unique=False)
        batch_op.create_index('ix_wms_jobs_input_sandbox', ['input_sandbox'], unique=False)
        batch_op.create_index('ix_wms_jobs_job_group', ['job_group'], unique=False)
        batch_op.create_index('ix_wms_jobs_owner_status', ['owner', 'status'], unique=False)
        batch_op.create_index('ix_wms_jobs_site_status', ['site', 'status'], unique=False)
        batch_op.create_index('ix_wms_jobs_status_lease_until', ['status', 'lease_until'], unique=False)
        batch_op.create_index('ix_wms_jobs_submitted_at', ['submitted_at'], unique=False)
        batch_op.create_index('ix_wms_jobs_tq_id_user_priority_id', ['tq_id', sa.literal_column('user_priority DESC'), 'id'], unique=False)

    op.create_table('wms_logging',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), autoincrement=True, nullable=False),
    sa.Column('job_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('attempt', sa.Integer(), nullable=False),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('minor_status', sa.String(length=255), nullable=False),
    sa.Column('application_status', sa.String(length=255), nullable=False),
    sa.Column('time', sa.DateTime(), nullable=False),
    sa.Column('source', sa.String(length=32), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_wms_logging'))
    )
    with op.batch_alter_table('wms_logging', schema=None) as batch_op:
        batch_op.create_index('ix_wms_logging_job_id', ['job_id'], unique=False)

    op.create_table('wms_parameters',
    sa.Column('job_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('attempt', sa.Integer(), nullable=False),
    sa.Column('name', sa.String(length=64), nullable=False),
    sa.Column('value', sa.Text(), nullable=False),
    sa.PrimaryKeyConstraint('job_id', 'attempt', 'name', name=op.f('pk_wms_parameters'))
    )
    op.create_table('wms_pilot_jobs',
    sa.Column('job_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('attempt', sa.Integer(), nullable=False),
    sa.Column('pilot_id', sa.String(length=128), nullable=False),
    sa.Column('matched_at', sa.DateTime(), nullable=False),
    sa.PrimaryKeyConstraint('job_id', 'attempt', name=op.f('pk_wms_pilot_jobs'))
    )
    with op.batch_alter_table('wms_pilot_jobs', schema=None) as batch_op:
        batch_op.create_index('ix_wms_pilot_jobs_pilot_id', ['pilot_id'], unique=False)

    op.create_table('wms_pilots',
    sa.Column('id', sa.String(length=128), nullable=False),
    sa.Column('site', sa.String(length=64), nullable=False),
    sa.Column('ce', sa.String(length=128), nullable=False),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('first_seen', sa.DateTime(), nullable=False),
    sa.Column('last_seen', sa.DateTime(), nullable=False),
    sa.Column('jobs_matched', sa.Integer(), nullable=False),
    sa.Column('current_job', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=True),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_wms_pilots'))
    )
    op.create_table('wms_sandboxes',
    sa.Column('hash', sa.String(length=64), nullable=False, comment='sha256 of the archive'),
    sa.Column('size', sa.BigInteger(), nullable=False),
    sa.Column('owner', sa.String(length=64), nullable=False),
    sa.Column('grp', sa.String(length=64), nullable=False),
    sa.Column('kind', sa.String(length=8), nullable=False, comment='input or output'),
    sa.Column('created_at', sa.DateTime(), nullable=False),
    sa.Column('last_access', sa.DateTime(), nullable=False),
    sa.PrimaryKeyConstraint('hash', name=op.f('pk_wms_sandboxes'))
    )
    op.create_table('wms_site_mask',
    sa.Column('site', sa.String(length=64), nullable=False),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('reason', sa.Text(), nullable=False),
    sa.Column('author', sa.String(length=64), nullable=False),
    sa.Column('updated_at', sa.DateTime(), nullable=False),
    sa.PrimaryKeyConstraint('site', name=op.f('pk_wms_site_mask'))
    )
    op.create_table('wms_site_mask_log',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), autoincrement=True, nullable=False),
    sa.Column('site', sa.String(length=64), nullable=False),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('reason', sa.Text(), nullable=False),
    sa.Column('author', sa.String(length=64), nullable=False),
    sa.Column('time', sa.DateTime(), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_wms_site_mask_log'))
    )
    with op.batch_alter_table('wms_site_mask_log', schema=None) as batch_op:
        batch_op.create_index('ix_wms_site_mask_log_site', ['site'], unique=False)

    op.create_table('wms_task_queues',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), autoincrement=True, nullable=False),
    sa.Column('key_hash', sa.String(length=40), nullable=False),
    sa.Column('owner', sa.String(length=64), nullable=False),
    sa.Column('grp', sa.String(length=64), nullable=False),
    sa.Column('vo', sa.String(length=32), nullable=False),
    sa.Column('job_type', sa.String(length=32), nullable=False),
    sa.Column('cpu_time', sa.Integer(), nullable=False, comment="rounded up to DIRAC's ladder"),
    sa.Column('platform', sa.String(length=64), nullable=True),
    sa.Column('tags', sa.Text(), nullable=False, comment='JSON list, all required'),
    sa.Column('min_ram', sa.Integer(), nullable=True),
    sa.Column('cores', sa.Integer(), nullable=False),
    sa.Column('sites', sa.Text(), nullable=False, comment='JSON list of candidate sites'),
    sa.Column('ces', sa.Text(), nullable=False, comment='JSON list; empty = any CE'),
    sa.Column('created_at', sa.DateTime(), nullable=False),
    sa.Column('updated_at', sa.DateTime(), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_wms_task_queues')),
    sa.UniqueConstraint('key_hash', name=op.f('uq_wms_task_queues_key_hash'))
    )


def downgrade() -> None:
    op.drop_table('wms_task_queues')
    with op.batch_alter_table('wms_site_mask_log', schema=None) as batch_op:
        batch_op.drop_index('ix_wms_site_mask_log_site')

    op.drop_table('wms_site_mask_log')
    op.drop_table('wms_site_mask')
    op.drop_table('wms_sandboxes')
    op.drop_table('wms_pilots')
    with op.batch_alter_table('wms_pilot_jobs', schema=None) as batch_op:
        batch_op.drop_index('ix_wms_pilot_jobs_pilot_id')

    op.drop_table('wms_pilot_jobs')
    op.drop_table('wms_parameters')
    with op.batch_alter_table('wms_logging', schema=None) as batch_op:
        batch_op.drop_index('ix_wms_logging_job_id')

    op.drop_table('wms_logging')
    with op.batch_alter_table('wms_jobs', schema=None) as batch_op:
        batch_op.drop_index('ix_wms_jobs_tq_id_user_priority_id')
        batch_op.drop_index('ix_wms_jobs_submitted_at')
        batch_op.drop_index('ix_wms_jobs_status_lease_until')
        batch_op.drop_index('ix_wms_jobs_site_status')
        batch_op.drop_index('ix_wms_jobs_owner_status')
        batch_op.drop_index('ix_wms_jobs_job_group')
        batch_op.drop_index('ix_wms_jobs_input_sandbox')
        batch_op.drop_index('ix_wms_jobs_grp_status')

    op.drop_table('wms_jobs')
    op.drop_table('wms_jdls')
    with op.batch_alter_table('wms_heartbeats', schema=None) as batch_op:
        batch_op.drop_index('ix_wms_heartbeats_job_id')

    op.drop_table('wms_heartbeats')
    op.drop_table('wms_counters')
    with op.batch_alter_table('wms_commands', schema=None) as batch_op:
        batch_op.drop_index('ix_wms_commands_job_id_attempt')

    op.drop_table('wms_commands')
