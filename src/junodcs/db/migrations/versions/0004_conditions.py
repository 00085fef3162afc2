"""Conditions: payloads, tags, IOVs, global tags and their map, per-table change times.

Revision ID: 0004_conditions
Revises: 0003_wms
Create Date: 2025-01-04
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import mysql

revision = "0004_conditions"
down_revision = "0003_wms"
branch_labels = None
depends_on = None

ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
BLOB = sa.LargeBinary().with_variant(mysql.LONGBLOB(), "mysql", "mariadb")


def upgrade() -> None:
    op.create_table(
        "cond_payloads",
        sa.Column("hash", sa.String(length=64), nullable=False, comment="sha256 hex of the bytes"),
        sa.Column("payload_type", sa.String(length=128), nullable=False),
        sa.Column("size", sa.BigInteger(), nullable=False),
        sa.Column("data", BLOB, nullable=True),
        sa.Column("uri", sa.Text(), nullable=True, comment="where the bytes live when not stored here"),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("created_by", sa.String(length=64), nullable=False),
        sa.PrimaryKeyConstraint("hash", name=op.f("pk_cond_payloads")),
    )
    op.create_table(
        "cond_tags",
        sa.Column("name", sa.String(length=128), nullable=False),
        sa.Column("payload_type", sa.String(length=128), nullable=False),
        sa.Column("time_type", sa.String(length=8), nullable=False, comment="run or time"),
        sa.Column("description", sa.Text(), nullable=False),
        sa.Column("locked", sa.Boolean(), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("created_by", sa.String(length=64), nullable=False),
        sa.Column("locked_at", sa.DateTime(), nullable=True),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_cond_tags")),
    )
    op.create_table(
        "cond_global_tags",
        sa.Column("name", sa.String(length=128), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False, comment="open, locked or invalid"),
        sa.Column("description", sa.Text(), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("created_by", sa.String(length=64), nullable=False),
        sa.Column("modified_at", sa.DateTime(), nullable=False),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_cond_global_tags")),
    )
    op.create_table(
        "cond_iovs",
        sa.Column("id", ID, autoincrement=True, nullable=False,
                  comment="insertion order: the latest insertion wins"),
        sa.Column("tag_name", sa.String(length=128), nullable=False),
        sa.Column("since", sa.BigInteger(), nullable=False, comment="first run (or UNIX second) of validity"),
        sa.Column("payload_hash", sa.String(length=64), nullable=False),
        sa.Column("insertion_time", sa.DateTime(), nullable=False),
        sa.Column("inserted_by", sa.String(length=64), nullable=False),
        sa.ForeignKeyConstraint(["payload_hash"], ["cond_payloads.hash"],
                                name=op.f("fk_cond_iovs_payload_hash_cond_payloads")),
        sa.ForeignKeyConstraint(["tag_name"], ["cond_tags.name"], name=op.f("fk_cond_iovs_tag_name_cond_tags")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_cond_iovs")),
    )
    op.create_index("ix_cond_iovs_tag_name_since", "cond_iovs", ["tag_name", "since"], unique=False)
    op.create_table(
        "cond_global_tag_map",
        sa.Column("global_tag", sa.String(length=128), nullable=False),
        sa.Column("payload_type", sa.String(length=128), nullable=False),
        sa.Column("tag_name", sa.String(length=128), nullable=False),
        sa.Column("added_at", sa.DateTime(), nullable=False),
        sa.ForeignKeyConstraint(["global_tag"], ["cond_global_tags.name"],
                                name=op.f("fk_cond_global_tag_map_global_tag_cond_global_tags")),
        sa.ForeignKeyConstraint(["tag_name"], ["cond_tags.name"],
                                name=op.f("fk_cond_global_tag_map_tag_name_cond_tags")),
        sa.PrimaryKeyConstraint("global_tag", "payload_type", name=op.f("pk_cond_global_tag_map")),
    )
    op.create_table(
        "cond_changes",
        sa.Column("table_name", sa.String(length=64), nullable=False),
        sa.Column("changed_us", sa.BigInteger(), nullable=False, comment="microseconds since the epoch"),
        sa.PrimaryKeyConstraint("table_name", name=op.f("pk_cond_changes")),
    )


def downgrade() -> None:
    op.drop_table("cond_changes")
    op.drop_table("cond_global_tag_map")
    op.drop_table("cond_iovs")
    op.drop_table("cond_global_tags")
    op.drop_table("cond_tags")
    op.drop_table("cond_payloads")
