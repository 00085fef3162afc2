"""Transfer queue: one index serving the claim (the queue's shape, then the next files of one link, VO and
activity in priority order, both read from the index alone on SQLite) instead of (state, source, destination).

Revision ID: 0008_fts_claim_index
Revises: 0007_rms
Create Date: 2026-12-07
"""

from alembic import op
import sqlalchemy as sa


revision = '0008_fts_claim_index'
down_revision = '0007_rms'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('fts_files', schema=None) as batch_op:
        batch_op.drop_index('ix_fts_files_queue')
    if op.get_bind().dialect.name == 'mysql':  # at most 3072 bytes per key: prefixes of the long strings
        op.execute('CREATE INDEX ix_fts_files_claim ON fts_files (file_state, source_se(191), dest_se(191), '
                   'vo_name, activity(100), priority DESC, file_id, next_attempt)')
        return
    with op.batch_alter_table('fts_files', schema=None) as batch_op:
        batch_op.create_index('ix_fts_files_claim', ['file_state', 'source_se', 'dest_se', 'vo_name', 'activity',
                                                     sa.text('priority DESC'), 'file_id', 'next_attempt'],
                              unique=False)


def downgrade() -> None:
    with op.batch_alter_table('fts_files', schema=None) as batch_op:
        batch_op.drop_index('ix_fts_files_claim')
        batch_op.create_index('ix_fts_files_queue', ['file_state', 'source_se', 'dest_se'], unique=False)
