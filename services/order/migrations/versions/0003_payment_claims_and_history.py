"""payment claims, order transitions, one success record per charge

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-04
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("orders", sa.Column("payment_claimed_at", sa.DateTime(timezone=True), nullable=True))
    op.add_column("orders", sa.Column("payment_claim", sa.String(32), nullable=True))
    op.create_index(
        "ix_orders_payment_claimed",
        "orders",
        ["payment_claimed_at"],
        postgresql_where=sa.text("payment_claimed_at IS NOT NULL"),
    )
    op.create_index(
        "ix_orders_refund_pending", "orders", ["closed_at"], postgresql_where=sa.text("state = 'refund_pending'")
    )
    op.create_table(
        "order_transitions",
        sa.Column("id", sa.BigInteger(), autoincrement=True, nullable=False),
        sa.Column("order_id", sa.String(length=32), nullable=False),
        sa.Column("from_state", sa.String(length=20), nullable=False),
        sa.Column("to_state", sa.String(length=20), nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.Column("actor", sa.String(length=128), nullable=False),
        sa.Column("reason", sa.String(length=64), nullable=True),
        sa.ForeignKeyConstraint(["order_id"], ["orders.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_order_transitions_order_id", "order_transitions", ["order_id"])
    # Earlier concurrent pays recorded one charge twice; the later records become what they were: replays.
    op.execute(
        "UPDATE payment_attempts SET outcome = 'replayed' WHERE outcome = 'succeeded' AND id NOT IN "
        "(SELECT min(id) FROM payment_attempts WHERE outcome = 'succeeded' GROUP BY provider, provider_ref)"
    )
    op.create_index(
        "ux_payment_attempts_one_success_per_charge",
        "payment_attempts",
        ["provider", "provider_ref"],
        unique=True,
        postgresql_where=sa.text("outcome = 'succeeded'"),
    )


def downgrade() -> None:
    op.drop_index("ux_payment_attempts_one_success_per_charge", table_name="payment_attempts")
    op.drop_index("ix_order_transitions_order_id", table_name="order_transitions")
    op.drop_table("order_transitions")
    op.drop_index("ix_orders_refund_pending", table_name="orders")
    op.drop_index("ix_orders_payment_claimed", table_name="orders")
    op.drop_column("orders", "payment_claim")
    op.drop_column("orders", "payment_claimed_at")
