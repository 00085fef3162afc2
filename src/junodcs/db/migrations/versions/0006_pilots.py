"""Pilots: CE job reference, submission time and end reason of each pilot record; pilot output.

Revision ID: 0006_pilots
Revises: 0005_transfer
Create Date: 2026-11-23
"""

from alembic import op
import sqlalchemy as sa


revision = '0006_pilots'
down_revision = '0005_transfer'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('wms_pilots', schema=None) as batch_op:
        batch_op.add_column(sa.Column('reference', sa.String(length=255), nullable=True,
                                      comment="the batch system's ID (CE job reference)"))
        batch_op.add_column(sa.Column('submitted_at', sa.DateTime(), nullable=True))
        batch_op.add_column(sa.Column('reason', sa.String(length=255), nullable=True,
                                      comment='why the pilot ended as it did'))
        batch_op.create_index('ix_wms_pilots_ce_status', ['ce', 'status'], unique=False)
    op.create_table('wms_pilot_output',
    sa.Column('pilot_id', sa.String(length=128), nullable=False),
    sa.Column('output', sa.Text(), nullable=False, comment="the pilot's log (tail), retrieved by its site director"),
    sa.Column('updated_at', sa.DateTime(), nullable=False),
    sa.PrimaryKeyConstraint('pilot_id', name=op.f('pk_wms_pilot_output'))
    )


def downgrade() -> None:
    op.drop_table('wms_pilot_output')
    with op.batch_alter_table('wms_pilots', schema=None) as batch_op:
        batch_op.drop_index('ix_wms_pilots_ce_status')
        batch_op.drop_column('reason')
        batch_op.drop_column('submitted_at')
        batch_op.drop_column('reference')
