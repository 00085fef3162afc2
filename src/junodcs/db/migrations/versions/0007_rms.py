"""Request management: requests, operations, files.

Revision ID: 0007_rms
Revises: 0006_pilots
Create Date: 2026-11-23
"""

from alembic import op
import sqlalchemy as sa
from sqlalchemy.dialects import mysql


revision = '0007_rms'
down_revision = '0006_pilots'
branch_labels = None
depends_on = None

BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
Time = sa.DateTime().with_variant(mysql.DATETIME(fsp=6), "mysql", "mariadb")


def upgrade() -> None:
    op.create_table('rms_requests',
    sa.Column('request_id', BigId, autoincrement=True, nullable=False),
    sa.Column('name', sa.String(length=255), nullable=False),
    sa.Column('owner', sa.String(length=64), nullable=False),
    sa.Column('owner_group', sa.String(length=64), nullable=True),
    sa.Column('job_id', sa.BigInteger(), nullable=True),
    sa.Column('source_component', sa.String(length=64), nullable=True),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('error', sa.Text(), nullable=True),
    sa.Column('created_at', Time, nullable=False),
    sa.Column('last_update', Time, nullable=False),
    sa.Column('not_before', Time, nullable=False, comment='earliest next execution'),
    sa.Column('executor', sa.String(length=255), nullable=True, comment='agent holding the lease'),
    sa.Column('lease_until', Time, nullable=True),
    sa.Column('claims', sa.Integer(), nullable=False, comment='fencing counter: +1 per claim'),
    sa.PrimaryKeyConstraint('request_id', name=op.f('pk_rms_requests')),
    sa.UniqueConstraint('name', name=op.f('uq_rms_requests_name'))
    )
    op.create_index('ix_rms_requests_queue', 'rms_requests', ['status', 'not_before'], unique=False)
    op.create_index('ix_rms_requests_owner', 'rms_requests', ['owner'], unique=False)
    op.create_index('ix_rms_requests_job', 'rms_requests', ['job_id'], unique=False)
    op.create_table('rms_operations',
    sa.Column('operation_id', BigId, autoincrement=True, nullable=False),
    sa.Column('request_id', BigId, nullable=False),
    sa.Column('position', sa.Integer(), nullable=False),
    sa.Column('type', sa.String(length=32), nullable=False),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('arguments', sa.Text(), nullable=True, comment='JSON'),
    sa.Column('source_se', sa.String(length=255), nullable=True),
    sa.Column('target_se', sa.Text(), nullable=True, comment='comma-separated SE names'),
    sa.Column('error', sa.Text(), nullable=True),
    sa.Column('transfer_job', sa.String(length=36), nullable=True, comment='transfer job of the current round'),
    sa.Column('transfer_round', sa.Integer(), nullable=False),
    sa.Column('created_at', Time, nullable=False),
    sa.Column('last_update', Time, nullable=False),
    sa.ForeignKeyConstraint(['request_id'], ['rms_requests.request_id'],
                            name=op.f('fk_rms_operations_request_id_rms_requests'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('operation_id', name=op.f('pk_rms_operations'))
    )
    op.create_index('ix_rms_operations_request', 'rms_operations', ['request_id', 'position'], unique=False)
    op.create_table('rms_files',
    sa.Column('file_id', BigId, autoincrement=True, nullable=False),
    sa.Column('operation_id', BigId, nullable=False),
    sa.Column('lfn', sa.String(length=1024), nullable=False),
    sa.Column('pfn', sa.Text(), nullable=True),
    sa.Column('guid', sa.String(length=64), nullable=True),
    sa.Column('size', sa.BigInteger(), nullable=True),
    sa.Column('checksum_type', sa.String(length=16), nullable=True),
    sa.Column('checksum', sa.String(length=64), nullable=True),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('attempt', sa.Integer(), nullable=False),
    sa.Column('error', sa.Text(), nullable=True),
    sa.Column('last_update', Time, nullable=False),
    sa.ForeignKeyConstraint(['operation_id'], ['rms_operations.operation_id'],
                            name=op.f('fk_rms_files_operation_id_rms_operations'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('file_id', name=op.f('pk_rms_files'))
    )
    op.create_index('ix_rms_files_operation', 'rms_files', ['operation_id'], unique=False)


def downgrade() -> None:
    op.drop_table('rms_files')
    op.drop_table('rms_operations')
    op.drop_table('rms_requests')
