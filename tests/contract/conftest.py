"""The whole stack as real processes for the contract tests: inventory, flashsale, coupon and order (one replica
each) behind a real gateway process, and the two payment providers, each on its own fresh database."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from redis.asyncio import Redis

from services.common.migrate import upgrade
from tests.conftest import PaySims, Processes, db_name_for, db_url_for, drop_database, free_port, redis_url_for

# A logical Redis database of this module's own (the suite's fourth), flushed at the start.
REDIS_URL = redis_url_for(3)
DATABASES = {"inventory": "inventory_ct", "order": "orders_ct", "coupon": "coupons_ct", "flashsale": "flashsale_ct"}
# Every request of a run comes from one address and one user: limits far above what the run sends, so each
# answer is the service's own and not the gateway's 429.
GENEROUS_LIMITS = {
    f"GATEWAY_{name}_{kind}": "1000000"
    for name in ("USER", "IP", "PURCHASE_USER", "PURCHASE_IP")
    for kind in ("RATE", "BURST")
}

# The PostgreSQL server is shared with the rest of the suite: a few connections per service are plenty here.
SMALL_POOLS = {f"{prefix}_DB_POOL_SIZE": "3" for prefix in ("INVENTORY", "COUPON", "ORDER", "FLASHSALE")}


@pytest.fixture(scope="module")
async def stack(paysim: PaySims) -> AsyncIterator[dict[str, str]]:
    """Base URLs of the gateway and of the providers (name -> URL)."""
    for name in DATABASES.values():
        await drop_database(db_name_for(name))
    for service, name in DATABASES.items():
        await asyncio.to_thread(upgrade, service, db_url_for(name))
    redis = Redis.from_url(REDIS_URL)
    await redis.flushdb()
    await redis.aclose()
    procs = Processes()

    def start(app: str, env: dict[str, str], port: int | None = None) -> str:
        return procs.start(app, {"REDIS_URL": REDIS_URL, **SMALL_POOLS, **env}, port)

    # coupon asks order (compensation) and order asks coupon (pricing): order's port is known before either starts.
    order_port = free_port()

    try:
        inventory = await asyncio.to_thread(
            start, "services.inventory.main:app", {"INVENTORY_DATABASE_URL": db_url_for("inventory_ct")}
        )
        coupon = await asyncio.to_thread(
            start,
            "services.coupon.main:app",
            {"COUPON_DATABASE_URL": db_url_for("coupons_ct"), "COUPON_ORDER_URL": f"http://127.0.0.1:{order_port}"},
        )
        order = await asyncio.to_thread(
            start,
            "services.order.main:app",
            {
                "ORDER_DATABASE_URL": db_url_for("orders_ct"),
                "ORDER_PAYSIM_PRIMARY_URL": paysim.primary,
                "ORDER_PAYSIM_BACKUP_URL": paysim.backup,
                "ORDER_COUPON_URL": coupon,
            },
            order_port,
        )
        flashsale = await asyncio.to_thread(
            start,
            "services.flashsale.main:app",
            {
                "FLASHSALE_DATABASE_URL": db_url_for("flashsale_ct"),
                "FLASHSALE_INVENTORY_URL": inventory,
                "FLASHSALE_ORDER_URL": order,
            },
        )
        pools = {"inventory": inventory, "coupon": coupon, "order": order, "flashsale": flashsale}
        gateway = await asyncio.to_thread(
            start,
            "gateway.main:app",
            {**{f"GATEWAY_{name.upper()}_URLS": url for name, url in pools.items()}, **GENEROUS_LIMITS},
        )
        yield {"gateway": gateway, "paysim": paysim.primary}
    finally:
        await asyncio.to_thread(procs.stop_all)
