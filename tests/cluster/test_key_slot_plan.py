"""Every Redis key family a service builds has a slot plan: tagged with its group's hash tag, or spread on purpose.

The builders are found by scanning the modules that own keys (every public `*_key`, `*_stream`, `*_tag`
function and every `*_KEY`, `*_STREAM`, `*_REGISTRY`, `*_CHANNEL` constant), so a family added without a
plan fails here before it meets CROSSSLOT on a cluster.
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Callable
from types import ModuleType
from typing import Any

import pytest
from redis.crc import key_slot

from gateway import ratelimit, views
from gateway.ratelimit import LimitClass
from services.common import idempotency
from services.common.contracts import keys as contracts
from services.coupon import store as coupon_store
from services.flashsale import store as flashsale_store
from services.inventory import store as inventory_store
from services.order import outbox

KEY_MODULES: tuple[ModuleType, ...] = (
    contracts,
    flashsale_store,
    coupon_store,
    inventory_store,
    outbox,
    views,
    ratelimit,
    idempotency,
)
BUILDER_NAME = re.compile(r"^[a-z][a-z_]*_(key|stream|tag)$")
CONSTANT_NAME = re.compile(r"^[A-Z][A-Z_]*_(KEY|STREAM|REGISTRY|CHANNEL)$")
# Sample arguments by parameter name; a builder with a parameter not listed here fails the scan.
SAMPLES: dict[str, Any] = {
    "sale_id": 7,
    "template_id": 9,
    "sku": "SKU-1",
    "user_id": "alice",
    "key": "k-1",
    "entry_id": "1700000000000-0",
    "job": "settle",
    "stream": contracts.ORDER_EVENTS_STREAM,
    "namespace": "order",
    "owner": "alice",
    "limits": LimitClass.SHOPPING,
    "identity": "alice",
}

# Families whose keys are spread over every slot on purpose: no command or script takes two of them.
SPREAD_ON_PURPOSE: dict[str, str] = {
    "services.common.idempotency.record_key": "one record per command; spreading them spreads the load",
    "gateway.ratelimit.bucket_key": "the limiter splits its batch by slot (ADR 0039)",
    "services.common.contracts.keys.ALERTS_STREAM": "one stream, XADD alone; no key goes with it",
}
# The key families that must share one slot: a script takes them together, or one master answers for all.
SAME_SLOT: dict[str, list[str]] = {
    "one sale": [
        flashsale_store.sale_key(7),
        flashsale_store.bought_key(7),
        flashsale_store.reservations_key(7),
        flashsale_store.idempotency_key(7, "alice", "k"),
        flashsale_store.events_stream(7),
        flashsale_store.alerts_stream(7),
        flashsale_store.alert_relayed_key(7, "1-0"),
        contracts.dead_letter_stream(flashsale_store.events_stream(7)),
    ],
    "flashsale's global keys": [
        flashsale_store.STREAM_REGISTRY,
        flashsale_store.NOTIFY_CHANNEL,
        flashsale_store.ORPHANS_KEY,
        flashsale_store.job_lock_key("settle"),
        flashsale_store.job_lock_key("reconcile"),
    ],
    "one coupon template": [
        coupon_store.template_key(9),
        coupon_store.claims_key(9),
        coupon_store.claim_idempotency_key(9, "alice", "k"),
        contracts.claim_stream(9),
    ],
    "coupon's global keys": [
        contracts.CLAIM_STREAM_REGISTRY,
        coupon_store.RECOVERED_RUN_KEY,
        coupon_store.RECOVERY_LEASE_KEY,
        coupon_store.SETTLE_LOCKS_KEY,
    ],
    "the order events": [
        contracts.ORDER_EVENTS_STREAM,
        outbox.marker_key(contracts.ORDER_EVENTS_STREAM),
        contracts.dead_letter_stream(contracts.ORDER_EVENTS_STREAM),
    ],
    "inventory's global keys": [inventory_store.job_lock_key("reconcile"), inventory_store.job_lock_key("sweep")],
}


def hash_tag(key: str) -> str | None:
    """The part of `key` Redis Cluster hashes when it has a tag (the first non-empty `{...}`), else None."""
    start = key.find("{")
    end = key.find("}", start + 1)
    if start < 0 or end <= start + 1:
        return None
    return key[start + 1 : end]


def scanned_families() -> list[tuple[str, str]]:
    """(qualified name, a key it builds) for every key builder and key constant of the key-owning modules."""
    found: list[tuple[str, str]] = []
    for module in KEY_MODULES:
        for name, value in vars(module).items():
            qualified = f"{module.__name__}.{name}"
            if CONSTANT_NAME.match(name) and isinstance(value, str):
                found.append((qualified, value))
            elif is_builder(name, value, module):
                found.append((qualified, call_with_samples(value)))
    return found


def is_builder(name: str, value: object, module: ModuleType) -> bool:
    """A key builder: a plain function of the module named like one (a request dependency is not)."""
    if not (BUILDER_NAME.match(name) and inspect.isfunction(value)):
        return False
    return value.__module__ == module.__name__ and not inspect.iscoroutinefunction(value)


def call_with_samples(builder: Callable[..., Any]) -> str:
    """The key `builder` makes from the sample arguments."""
    params = inspect.signature(builder).parameters
    missing = [p for p in params if p not in SAMPLES]
    assert not missing, f"{builder.__qualname__}: no sample value for {missing}"
    key = builder(**{p: SAMPLES[p] for p in params})
    assert isinstance(key, str)
    return key


def test_the_scan_finds_every_key_owning_module_s_builders() -> None:
    names = {name for name, _key in scanned_families()}
    # A sample of each module: the scan reaches them all (a renamed builder would drop out silently otherwise).
    assert {
        "services.flashsale.store.job_lock_key",
        "services.flashsale.store.alert_relayed_key",
        "services.coupon.store.RECOVERY_LEASE_KEY",
        "services.inventory.store.job_lock_key",
        "services.order.outbox.marker_key",
        "gateway.views.VIEWS_KEY",
        "gateway.ratelimit.bucket_key",
        "services.common.idempotency.record_key",
        "services.common.contracts.keys.ORDER_EVENTS_STREAM",
    } <= names


@pytest.mark.parametrize(("family", "key"), scanned_families(), ids=lambda v: str(v))
def test_every_key_family_is_tagged_or_spread_on_purpose(family: str, key: str) -> None:
    if family in SPREAD_ON_PURPOSE:
        assert hash_tag(key) is None, f"{family} is listed as spread on purpose but carries a tag: {key}"
        return
    tag = hash_tag(key)
    assert tag is not None, f"{family} builds {key!r}: no hash tag and not listed as spread on purpose"
    assert key_slot(key.encode()) == key_slot(tag.encode())


@pytest.mark.parametrize("group", list(SAME_SLOT))
def test_keys_used_together_share_one_slot(group: str) -> None:
    slots = {key: key_slot(key.encode()) for key in SAME_SLOT[group]}
    assert len(set(slots.values())) == 1, slots
