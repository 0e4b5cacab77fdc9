"""units returned to the warehouse, settled sales

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-25
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("sales", sa.Column("returned_units", sa.Integer(), nullable=False, server_default="0"))
    op.add_column("sales", sa.Column("settled_at", sa.DateTime(timezone=True), nullable=True))
    op.create_index("ix_sales_unsettled", "sales", ["id"], postgresql_where=sa.text("settled_at IS NULL"))


def downgrade() -> None:
    op.drop_index("ix_sales_unsettled", table_name="sales")
    op.drop_column("sales", "settled_at")
    op.drop_column("sales", "returned_units")
