"""Alembic environment for order (see services/common/migration_env.py)."""

from services.common.migration_env import run_migrations
from services.order.models import Base

run_migrations(Base.metadata, "order")
