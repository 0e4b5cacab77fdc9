"""Alembic environment for inventory (see services/common/migration_env.py)."""

from services.common.migration_env import run_migrations
from services.inventory.models import Base

run_migrations(Base.metadata, "inventory")
