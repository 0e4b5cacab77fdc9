"""/admin endpoints: SKUs, restock and adjustments, thresholds, allocations to sales, ledger, reconciliation,
replenishment reminders.

Every change is audited; a change sent with an Idempotency-Key is applied once and replayed after.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Header, Path, Query

from services.common.auth import AdminUser
from services.common.idempotency import (
    MAX_KEY_LENGTH,
    IdempotencyKeyInFlight,
    IdempotencyKeyReused,
    IdempotencyStore,
    fingerprint,
)
from services.common.openapi import KEY_PATTERN, problems
from services.inventory import errors
from services.inventory.deps import AllocationsDep, LedgerDep, ReconcilerDep, ReplenishmentDep, SkusDep
from services.inventory.router import SkuPath
from services.inventory.schemas import (
    SKU_PATTERN,
    AdjustRequest,
    AllocationChange,
    AllocationOut,
    AllocationRequest,
    AllocationTarget,
    LedgerOut,
    Reconciliation,
    ReminderOut,
    RestockRequest,
    SkuCreate,
    SkuDetail,
    SkuOut,
    ThresholdRequest,
)

router = APIRouter(prefix="/admin", tags=["admin"])

SaleId = Annotated[int, Path(ge=1, le=2**62)]
OptionalKey = Annotated[
    str | None, Header(alias="Idempotency-Key", min_length=1, max_length=MAX_KEY_LENGTH, pattern=KEY_PATTERN)
]
KEYED = (IdempotencyKeyInFlight, IdempotencyKeyReused)
SKU_CHANGE = (errors.SkuNotFound, errors.InsufficientStock, errors.StockLimitExceeded, *KEYED)
ALLOCATION_CHANGE = (errors.AllocationNotFound, errors.AllocationExceeded, errors.InsufficientStock, *KEYED)


@dataclass(frozen=True, slots=True)
class OncePerKey:
    """An admin change with the request's Idempotency-Key: applied once when a key is sent, replayed after."""

    records: IdempotencyStore
    key: str | None

    async def run(self, *, actor: str, payload: dict[str, Any], action: Callable[[], Awaitable[Any]]) -> Any:
        """Run `action`, or answer what its first run with this key answered (a key with another body: 422)."""
        if self.key is None:
            return await action()

        async def first_run() -> tuple[int, Any]:
            result = await action()
            return 200, result.model_dump(mode="json")

        _status, body = await self.records.run(
            key=self.key, owner=actor, request_fingerprint=fingerprint(payload), action=first_run
        )
        return body


async def _once_per_key(ledger: LedgerDep, key: OptionalKey = None) -> OncePerKey:
    return OncePerKey(ledger.admin_keys, key)


Once = Annotated[OncePerKey, Depends(_once_per_key)]


@router.post(
    "/skus",
    status_code=201,
    response_model=SkuOut,
    responses=problems(errors.SkuExists, errors.InvalidThreshold, errors.StockLimitExceeded, *KEYED),
)
async def create_sku(body: SkuCreate, user: AdminUser, skus: SkusDep, once: Once) -> Any:
    """Create a SKU with its initial stock (409 SKU_EXISTS when the code is taken)."""
    return await once.run(
        actor=user.user_id,
        payload={"op": "create", **body.model_dump()},
        action=lambda: skus.create_sku(actor=user.user_id, data=body),
    )


@router.get("/skus/{sku}", response_model=SkuDetail, responses=problems(errors.SkuNotFound))
async def sku_detail(sku: SkuPath, user: AdminUser, skus: SkusDep) -> SkuDetail:
    """Counters and the latest ledger entries."""
    return await skus.sku_detail(sku)


@router.get("/skus/{sku}/ledger", response_model=list[LedgerOut], responses=problems(errors.SkuNotFound))
async def ledger(
    sku: SkuPath,
    user: AdminUser,
    skus: SkusDep,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    before_id: Annotated[int | None, Query(ge=1)] = None,
) -> list[LedgerOut]:
    """The SKU's ledger, newest first; pass the last id seen as `before_id` for the next page."""
    return await skus.ledger_entries(sku=sku, limit=limit, before_id=before_id)


@router.post("/skus/{sku}/restock", response_model=SkuOut, responses=problems(*SKU_CHANGE))
async def restock(sku: SkuPath, body: RestockRequest, user: AdminUser, skus: SkusDep, once: Once) -> Any:
    """Add received units; lifting available above the low-stock threshold re-arms its alert."""
    return await once.run(
        actor=user.user_id,
        payload={"op": "restock", "sku": sku, **body.model_dump()},
        action=lambda: skus.restock(actor=user.user_id, sku=sku, quantity=body.quantity, reason=body.reason),
    )


@router.post("/skus/{sku}/adjust", response_model=SkuOut, responses=problems(*SKU_CHANGE))
async def adjust(sku: SkuPath, body: AdjustRequest, user: AdminUser, skus: SkusDep, once: Once) -> Any:
    """Correct stock after a count; removing more than is available is refused (409 INSUFFICIENT_STOCK)."""
    return await once.run(
        actor=user.user_id,
        payload={"op": "adjust", "sku": sku, **body.model_dump()},
        action=lambda: skus.adjust(actor=user.user_id, sku=sku, delta=body.delta, reason=body.reason),
    )


@router.put(
    "/skus/{sku}/threshold", response_model=SkuOut, responses=problems(errors.SkuNotFound, errors.InvalidThreshold)
)
async def set_threshold(sku: SkuPath, body: ThresholdRequest, user: AdminUser, skus: SkusDep) -> SkuOut:
    """Set the low-stock threshold in units (absolute) or percent of on-hand; null turns it off."""
    return await skus.set_threshold(actor=user.user_id, sku=sku, value=body.value, kind=body.kind)


@router.post(
    "/allocations",
    status_code=201,
    response_model=AllocationOut,
    responses=problems(errors.SkuNotFound, *ALLOCATION_CHANGE),
)
async def allocate(body: AllocationRequest, user: AdminUser, allocations: AllocationsDep, once: Once) -> Any:
    """Give a sale units from available stock (409 INSUFFICIENT_STOCK, nothing changed, when too few)."""
    return await once.run(
        actor=user.user_id,
        payload={"op": "allocate", **body.model_dump()},
        action=lambda: allocations.allocate(
            actor=user.user_id, sale_id=body.sale_id, sku=body.sku, quantity=body.quantity
        ),
    )


@router.put(
    "/allocations/{sale_id}/{sku}",
    response_model=AllocationOut,
    responses=problems(errors.SkuNotFound, *ALLOCATION_CHANGE),
)
async def set_allocation(
    sale_id: SaleId, sku: SkuPath, body: AllocationTarget, user: AdminUser, allocations: AllocationsDep
) -> AllocationOut:
    """Bring a sale's allocation to running totals (allocated, sold, returned); repeating it changes nothing.

    This is how the flashsale service keeps its sales' stock in step with the warehouse: creating a sale
    or adding stock raises `allocated` (409 INSUFFICIENT_STOCK when too few are available), paid orders
    raise `sold`, units left when a sale ends raise `returned`.
    """
    return await allocations.set_allocation(
        actor=user.user_id, sale_id=sale_id, sku=sku, allocated=body.allocated, sold=body.sold, returned=body.returned
    )


@router.get("/allocations", response_model=list[AllocationOut])
async def open_allocations(user: AdminUser, allocations: AllocationsDep) -> list[AllocationOut]:
    """Every allocation still holding units (allocated > sold + returned): what sales have out of the warehouse."""
    return await allocations.open_allocations()


@router.get("/allocations/{sale_id}/{sku}", response_model=AllocationOut, responses=problems(errors.AllocationNotFound))
async def get_allocation(sale_id: SaleId, sku: SkuPath, user: AdminUser, allocations: AllocationsDep) -> AllocationOut:
    """A sale's allocation of a SKU."""
    return await allocations.get_allocation(sale_id=sale_id, sku=sku)


@router.post(
    "/allocations/{sale_id}/{sku}/return", response_model=AllocationOut, responses=problems(*ALLOCATION_CHANGE)
)
async def return_allocation(
    sale_id: SaleId, sku: SkuPath, body: AllocationChange, user: AdminUser, allocations: AllocationsDep, once: Once
) -> Any:
    """Unsold units of a sale go back to available."""
    return await once.run(
        actor=user.user_id,
        payload={"op": "return", "sale_id": sale_id, "sku": sku, **body.model_dump()},
        action=lambda: allocations.return_allocation(
            actor=user.user_id, sale_id=sale_id, sku=sku, quantity=body.quantity
        ),
    )


@router.post("/allocations/{sale_id}/{sku}/sell", response_model=AllocationOut, responses=problems(*ALLOCATION_CHANGE))
async def sell_allocation(
    sale_id: SaleId, sku: SkuPath, body: AllocationChange, user: AdminUser, allocations: AllocationsDep, once: Once
) -> Any:
    """Units the sale sold: allocated -> sold."""
    return await once.run(
        actor=user.user_id,
        payload={"op": "sell", "sale_id": sale_id, "sku": sku, **body.model_dump()},
        action=lambda: allocations.sell_allocation(
            actor=user.user_id, sale_id=sale_id, sku=sku, quantity=body.quantity
        ),
    )


@router.get("/reconciliation", response_model=Reconciliation)
async def reconciliation(user: AdminUser, reconciler: ReconcilerDep) -> Reconciliation:
    """Per SKU: on_hand vs available + allocated + held + sold, from the counters and from the ledger,
    and whether the Redis copy of `available` matches."""
    return await reconciler.reconcile()


@router.post("/reconciliation/repair", response_model=Reconciliation)
async def repair(user: AdminUser, reconciler: ReconcilerDep) -> Reconciliation:
    """Rebuild the Redis copy of every drifted SKU from PostgreSQL (e.g. after Redis lost data); audited."""
    return await reconciler.repair_mirror(actor=user.user_id)


@router.get("/replenishment", response_model=list[ReminderOut])
async def replenishment(
    user: AdminUser,
    replenishment: ReplenishmentDep,
    include_resolved: bool = False,
    sku: Annotated[str | None, Query(pattern=SKU_PATTERN)] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> list[ReminderOut]:
    """SKUs that crossed their low-stock threshold and wait for a restock (newest first); a restock that
    lifts available above the threshold resolves a reminder, `include_resolved=true` lists those too."""
    return await replenishment.reminders(include_resolved=include_resolved, sku=sku, limit=limit)
