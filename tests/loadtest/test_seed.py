"""The seeder refuses to schedule a sale whose keys Redis already holds: its warm-up would sell old stock."""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator

import pytest
from redis import Redis

from loadtest import seed
from services.coupon.store import template_key
from services.flashsale.store import sale_key
from tests.conftest import redis_url_for

REDIS_URL = redis_url_for(3)  # the suite's fourth logical database; these tests touch only keys of their own ids


@pytest.fixture
def redis() -> Iterator[Redis]:
    client = Redis.from_url(REDIS_URL, decode_responses=True)
    yield client
    client.close()


def _unused_id() -> int:
    return 10**9 + uuid.uuid4().int % 10**8


def test_a_new_sale_with_no_keys_in_redis_is_seeded() -> None:
    seed.refuse_stale_keys(REDIS_URL, _unused_id(), _unused_id())  # nothing there: no refusal


def test_a_sale_whose_stock_redis_still_holds_is_refused(redis: Redis) -> None:
    sale_id = _unused_id()
    redis.hset(sale_key(sale_id), mapping={"remaining": 500})
    try:
        with pytest.raises(seed.SeedError, match=re.escape(sale_key(sale_id))):
            seed.refuse_stale_keys(REDIS_URL, sale_id, None)
    finally:
        redis.delete(sale_key(sale_id))


def test_a_coupon_template_whose_claims_redis_still_counts_is_refused(redis: Redis) -> None:
    template_id = _unused_id()
    redis.hset(template_key(template_id), mapping={"claimed": 3})
    try:
        assert seed.stale_keys(REDIS_URL, _unused_id(), template_id) == [f"{template_key(template_id)} claimed"]
    finally:
        redis.delete(template_key(template_id))
