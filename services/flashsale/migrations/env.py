"""Alembic environment for flashsale (see services/common/migration_env.py)."""

from services.common.migration_env import run_migrations
from services.flashsale.models import Base

run_migrations(Base.metadata, "flashsale")
