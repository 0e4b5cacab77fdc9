"""Alembic environment for coupon (see services/common/migration_env.py)."""

from services.common.migration_env import run_migrations
from services.coupon.models import Base

run_migrations(Base.metadata, "coupon")
