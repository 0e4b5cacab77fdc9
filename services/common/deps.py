"""FastAPI dependency aliases for the per-process resources opened in the lifespan."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import Depends, Request
from sqlalchemy.ext.asyncio import AsyncSession

from services.common.resources import RedisClient


async def _redis(request: Request) -> RedisClient:
    redis: RedisClient = request.app.state.redis
    return redis


async def _session(request: Request) -> AsyncIterator[AsyncSession]:
    async with request.app.state.sessions() as session:
        yield session


RedisDep = Annotated[RedisClient, Depends(_redis)]
SessionDep = Annotated[AsyncSession, Depends(_session)]
