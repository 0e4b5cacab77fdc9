"""orders priced with coupons

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-25
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column(
        "orders",
        sa.Column("coupon_ids", postgresql.JSONB(), server_default=sa.text("'[]'::jsonb"), nullable=False),
    )
    op.add_column("orders", sa.Column("coupons", postgresql.JSONB(), nullable=True))
    op.add_column("orders", sa.Column("member", sa.Boolean(), server_default=sa.false(), nullable=False))
    op.add_column("orders", sa.Column("pricing", sa.String(16), server_default="final", nullable=False))
    op.create_index(
        "ix_orders_pricing_pending", "orders", ["created_at"], postgresql_where=sa.text("pricing = 'coupons_pending'")
    )


def downgrade() -> None:
    op.drop_index("ix_orders_pricing_pending", table_name="orders")
    for column in ("pricing", "member", "coupons", "coupon_ids"):
        op.drop_column("orders", column)
