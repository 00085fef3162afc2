"""Catalog: directories, files, replicas, typed metadata, usage, provenance, datasets.

Revision ID: 0002_catalog
Revises: 0001_auth
Create Date: 2025-01-02
"""

import sqlalchemy as sa
from alembic import op

revision = "0002_catalog"
down_revision = "0001_auth"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('cat_datasets',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), autoincrement=True, nullable=False),
    sa.Column('name', sa.String(length=255), nullable=False),
    sa.Column('path', sa.Text(), nullable=False, comment='root directory the query is evaluated under'),
    sa.Column('query', sa.Text(), nullable=False, comment='JSON form of the metadata query'),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('owner', sa.String(length=64), nullable=False),
    sa.Column('grp', sa.String(length=64), nullable=False),
    sa.Column('description', sa.Text(), nullable=False),
    sa.Column('files', sa.BigInteger(), nullable=True),
    sa.Column('bytes', sa.BigInteger(), nullable=True),
    sa.Column('content_hash', sa.String(length=64), nullable=True),
    sa.Column('created_at', sa.DateTime(), nullable=False),
    sa.Column('modified_at', sa.DateTime(), nullable=False),
    sa.Column('frozen_at', sa.DateTime(), nullable=True),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_cat_datasets')),
    sa.UniqueConstraint('name', name=op.f('uq_cat_datasets_name'))
    )
    op.create_table('cat_dirs',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), autoincrement=True, nullable=False),
    sa.Column('parent_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=True),
    sa.Column('name', sa.String(length=255), nullable=False),
    sa.Column('path', sa.Text(), nullable=False),
    sa.Column('path_hash', sa.String(length=40), nullable=False),
    sa.Column('depth', sa.Integer(), nullable=False),
    sa.Column('owner', sa.String(length=64), nullable=False),
    sa.Column('grp', sa.String(length=64), nullable=False),
    sa.Column('mode', sa.Integer(), nullable=False),
    sa.Column('created_at', sa.DateTime(), nullable=False),
    sa.Column('modified_at', sa.DateTime(), nullable=False),
    sa.ForeignKeyConstraint(['parent_id'], ['cat_dirs.id'], name=op.f('fk_cat_dirs_parent_id_cat_dirs')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_cat_dirs')),
    sa.UniqueConstraint('path_hash', name=op.f('uq_cat_dirs_path_hash'))
    )
    op.create_index('ix_cat_dirs_parent_id_name', 'cat_dirs', ['parent_id', 'name'], unique=False)
    op.create_table('cat_meta_fields',
    sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
    sa.Column('name', sa.String(length=64), nullable=False),
    sa.Column('type', sa.String(length=8), nullable=False),
    sa.Column('level', sa.String(length=4), nullable=False, comment='file or dir'),
    sa.Column('created_at', sa.DateTime(), nullable=False),
    sa.Column('created_by', sa.String(length=64), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_cat_meta_fields')),
    sa.UniqueConstraint('name', name=op.f('uq_cat_meta_fields_name'))
    )
    op.create_table('cat_dataset_files',
    sa.Column('dataset_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('seq', sa.Integer(), nullable=False),
    sa.Column('lfn', sa.Text(), nullable=False),
    sa.Column('size', sa.BigInteger(), nullable=False),
    sa.Column('checksum', sa.String(length=8), nullable=False),
    sa.ForeignKeyConstraint(['dataset_id'], ['cat_datasets.id'], name=op.f('fk_cat_dataset_files_dataset_id_cat_datasets')),
    sa.PrimaryKeyConstraint('dataset_id', 'seq', name=op.f('pk_cat_dataset_files')),
    sqlite_with_rowid=False,
    )
    op.create_table('cat_dmeta',
    sa.Column('dir_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('field_id', sa.Integer(), nullable=False),
    sa.Column('v_int', sa.BigInteger(), nullable=True),
    sa.Column('v_float', sa.Float(), nullable=True),
    sa.Column('v_string', sa.String(length=128), nullable=True),
    sa.Column('v_date', sa.DateTime(), nullable=True),
    sa.ForeignKeyConstraint(['dir_id'], ['cat_dirs.id'], name=op.f('fk_cat_dmeta_dir_id_cat_dirs')),
    sa.ForeignKeyConstraint(['field_id'], ['cat_meta_fields.id'], name=op.f('fk_cat_dmeta_field_id_cat_meta_fields')),
    sa.PrimaryKeyConstraint('dir_id', 'field_id', name=op.f('pk_cat_dmeta')),
    sqlite_with_rowid=False,
    )
    op.create_index('ix_cat_dmeta_field_id', 'cat_dmeta', ['field_id'], unique=False)
    op.create_table('cat_files',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), autoincrement=True, nullable=False),
    sa.Column('dir_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('name', sa.String(length=255), nullable=False),
    sa.Column('size', sa.BigInteger(), nullable=False),
    sa.Column('checksum', sa.String(length=8), nullable=False),
    sa.Column('guid', sa.String(length=36), nullable=False),
    sa.Column('owner', sa.String(length=64), nullable=False),
    sa.Column('grp', sa.String(length=64), nullable=False),
    sa.Column('mode', sa.Integer(), nullable=False),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('created_at', sa.DateTime(), nullable=False),
    sa.Column('modified_at', sa.DateTime(), nullable=False),
    sa.ForeignKeyConstraint(['dir_id'], ['cat_dirs.id'], name=op.f('fk_cat_files_dir_id_cat_dirs')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_cat_files')),
    sa.UniqueConstraint('dir_id', 'name', name=op.f('uq_cat_files_dir_id_name'))
    )
    op.create_index('ix_cat_files_guid', 'cat_files', ['guid'], unique=False)
    op.create_table('cat_usage',
    sa.Column('dir_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('se', sa.String(length=64), nullable=False, comment="'' = logical totals"),
    sa.Column('files', sa.BigInteger(), nullable=False),
    sa.Column('bytes', sa.BigInteger(), nullable=False),
    sa.ForeignKeyConstraint(['dir_id'], ['cat_dirs.id'], name=op.f('fk_cat_usage_dir_id_cat_dirs')),
    sa.PrimaryKeyConstraint('dir_id', 'se', name=op.f('pk_cat_usage')),
    sqlite_with_rowid=False,
    )
    op.create_table('cat_ancestry',
    sa.Column('file_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('ancestor_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.ForeignKeyConstraint(['ancestor_id'], ['cat_files.id'], name=op.f('fk_cat_ancestry_ancestor_id_cat_files')),
    sa.ForeignKeyConstraint(['file_id'], ['cat_files.id'], name=op.f('fk_cat_ancestry_file_id_cat_files')),
    sa.PrimaryKeyConstraint('file_id', 'ancestor_id', name=op.f('pk_cat_ancestry')),
    sqlite_with_rowid=False,
    )
    op.create_index('ix_cat_ancestry_ancestor_id', 'cat_ancestry', ['ancestor_id'], unique=False)
    op.create_table('cat_fmeta_date',
    sa.Column('file_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('field_id', sa.Integer(), nullable=False),
    sa.Column('value', sa.DateTime(), nullable=False),
    sa.ForeignKeyConstraint(['field_id'], ['cat_meta_fields.id'], name=op.f('fk_cat_fmeta_date_field_id_cat_meta_fields')),
    sa.ForeignKeyConstraint(['file_id'], ['cat_files.id'], name=op.f('fk_cat_fmeta_date_file_id_cat_files')),
    sa.PrimaryKeyConstraint('file_id', 'field_id', name=op.f('pk_cat_fmeta_date')),
    sqlite_with_rowid=False,
    )
    op.create_index('ix_cat_fmeta_date_field_id_value', 'cat_fmeta_date', ['field_id', 'value'], unique=False)
    op.create_table('cat_fmeta_float',
    sa.Column('file_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('field_id', sa.Integer(), nullable=False),
    sa.Column('value', sa.Float(), nullable=False),
    sa.ForeignKeyConstraint(['field_id'], ['cat_meta_fields.id'], name=op.f('fk_cat_fmeta_float_field_id_cat_meta_fields')),
    sa.ForeignKeyConstraint(['file_id'], ['cat_files.id'], name=op.f('fk_cat_fmeta_float_file_id_cat_files')),
    sa.PrimaryKeyConstraint('file_id', 'field_id', name=op.f('pk_cat_fmeta_float')),
    sqlite_with_rowid=False,
    )
    op.create_index('ix_cat_fmeta_float_field_id_value', 'cat_fmeta_float', ['field_id', 'value'], unique=False)
    op.create_table('cat_fmeta_int',
    sa.Column('file_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('field_id', sa.Integer(), nullable=False),
    sa.Column('value', sa.BigInteger(), nullable=False),
    sa.ForeignKeyConstraint(['field_id'], ['cat_meta_fields.id'], name=op.f('fk_cat_fmeta_int_field_id_cat_meta_fields')),
    sa.ForeignKeyConstraint(['file_id'], ['cat_files.id'], name=op.f('fk_cat_fmeta_int_file_id_cat_files')),
    sa.PrimaryKeyConstraint('file_id', 'field_id', name=op.f('pk_cat_fmeta_int')),
    sqlite_with_rowid=False,
    )
    op.create_index('ix_cat_fmeta_int_field_id_value', 'cat_fmeta_int', ['field_id', 'value'], unique=False)
    op.create_table('cat_fmeta_string',
    sa.Column('file_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('field_id', sa.Integer(), nullable=False),
    sa.Column('value', sa.String(length=128), nullable=False),
    sa.ForeignKeyConstraint(['field_id'], ['cat_meta_fields.id'], name=op.f('fk_cat_fmeta_string_field_id_cat_meta_fields')),
    sa.ForeignKeyConstraint(['file_id'], ['cat_files.id'], name=op.f('fk_cat_fmeta_string_file_id_cat_files')),
    sa.PrimaryKeyConstraint('file_id', 'field_id', name=op.f('pk_cat_fmeta_string')),
    sqlite_with_rowid=False,
    )
    op.create_index('ix_cat_fmeta_string_field_id_value', 'cat_fmeta_string', ['field_id', 'value'], unique=False)
    op.create_table('cat_replicas',
    sa.Column('file_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('se', sa.String(length=64), nullable=False),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('created_at', sa.DateTime(), nullable=False),
    sa.ForeignKeyConstraint(['file_id'], ['cat_files.id'], name=op.f('fk_cat_replicas_file_id_cat_files')),
    sa.PrimaryKeyConstraint('file_id', 'se', name=op.f('pk_cat_replicas')),
    sqlite_with_rowid=False,
    )
    op.create_index('ix_cat_replicas_se', 'cat_replicas', ['se'], unique=False)


def downgrade() -> None:
    op.drop_table('cat_replicas')
    op.drop_table('cat_fmeta_string')
    op.drop_table('cat_fmeta_int')
    op.drop_table('cat_fmeta_float')
    op.drop_table('cat_fmeta_date')
    op.drop_table('cat_ancestry')
    op.drop_table('cat_usage')
    op.drop_table('cat_files')
    op.drop_table('cat_dmeta')
    op.drop_table('cat_dataset_files')
    op.drop_table('cat_meta_fields')
    op.drop_table('cat_dirs')
    op.drop_table('cat_datasets')
