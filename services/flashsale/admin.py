"""/admin endpoints: the sale lifecycle for ops. Admin role required; every call is audited."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Annotated, Any

from fastapi import APIRouter, Header, Query, Request
from starlette.responses import JSONResponse, Response

from services.common.auth import AdminUser, Principal
from services.common.idempotency import (
    MAX_KEY_LENGTH,
    IdempotencyKeyInFlight,
    IdempotencyKeyRequired,
    IdempotencyKeyReused,
    IdempotencyStore,
    fingerprint,
)
from services.common.openapi import Answer, problems
from services.flashsale import errors
from services.flashsale.deps import ServiceDep
from services.flashsale.events import sale_alerts
from services.flashsale.lifecycle import TRANSITIONS, transition
from services.flashsale.models import SaleState
from services.flashsale.reconciliation import SaleReconciler
from services.flashsale.router import SaleId
from services.flashsale.schemas import (
    AddStock,
    AuditOut,
    BriefingOut,
    SaleAlert,
    SaleCreate,
    SaleOut,
    SaleReconciliation,
    SaleStats,
    SaleUpdate,
)

router = APIRouter(prefix="/admin", tags=["admin"])

# The warehouse (inventory) allocates a sale's units; the order record backs reconciliation.
INVENTORY_DOWN = Answer(503, "INVENTORY_UNAVAILABLE", "the inventory service did not answer; nothing was changed")
ORDERS_DOWN = Answer(503, "ORDER_UNAVAILABLE", "the order service did not answer")
WAREHOUSE_REFUSED = Answer(409, "INSUFFICIENT_STOCK", "the warehouse refused (its code is kept, e.g. SKU_NOT_FOUND)")
KEYED = (IdempotencyKeyRequired, IdempotencyKeyInFlight, IdempotencyKeyReused)
CHANGE_PROBLEMS = (errors.SaleNotFound, errors.StockUnavailable, INVENTORY_DOWN, WAREHOUSE_REFUSED, *KEYED)

OptionalKey = Annotated[str | None, Header(alias="Idempotency-Key")]
Limit = Annotated[int, Query(ge=1, le=500)]
Offset = Annotated[int, Query(ge=0, le=1_000_000)]


async def _once(
    request: Request,
    user: Principal,
    key: str | None,
    payload: Any,
    action: Callable[[], Awaitable[dict[str, Any]]],
    status: int = 200,
) -> Response:
    """Run an admin change; with an Idempotency-Key, a replay gets the first answer."""
    if key is None:
        return JSONResponse(await action(), status_code=status)
    key = key.strip()
    if not key or len(key) > MAX_KEY_LENGTH or not key.isascii() or not key.isprintable():
        raise IdempotencyKeyRequired(f"Idempotency-Key must be 1-{MAX_KEY_LENGTH} printable ASCII characters")

    async def run() -> tuple[int, Any]:
        return status, await action()

    store = IdempotencyStore(request.app.state.redis, "flashsale-admin")
    code, body = await store.run(
        key=key,
        owner=user.user_id,
        request_fingerprint=fingerprint({"path": request.url.path, "body": payload}),
        action=run,
    )
    return JSONResponse(body, status_code=code)


@router.post(
    "/sales",
    status_code=201,
    response_model=SaleOut,
    responses=problems(errors.InvalidSale, INVENTORY_DOWN, WAREHOUSE_REFUSED, *KEYED),
)
async def create_sale(
    request: Request, body: SaleCreate, user: AdminUser, service: ServiceDep, key: OptionalKey = None
) -> Response:
    """Create a sale in draft."""
    payload = body.model_dump(mode="json")
    return await _once(
        request, user, key, payload, lambda: service.sales.create_sale(actor=user.user_id, data=body), status=201
    )


@router.patch(
    "/sales/{sale_id}",
    response_model=SaleOut,
    responses=problems(
        errors.SaleNotFound, errors.InvalidSale, errors.SaleAlreadyStarted, errors.StaleStock, errors.StockUnavailable
    ),
)
async def update_sale(sale_id: SaleId, body: SaleUpdate, user: AdminUser, service: ServiceDep) -> dict[str, Any]:
    """Change a sale before it goes live."""
    return await service.sales.update_sale(actor=user.user_id, sale_id=sale_id, data=body)


def _transition_route(action: str) -> None:
    async def endpoint(
        request: Request, sale_id: SaleId, user: AdminUser, service: ServiceDep, key: OptionalKey = None
    ) -> Response:
        return await _once(
            request,
            user,
            key,
            {"sale_id": sale_id},
            lambda: transition(service.core, actor=user.user_id, sale_id=sale_id, action=action),
        )

    endpoint.__doc__ = f"{action.capitalize()} a sale."
    router.add_api_route(
        f"/sales/{{sale_id}}/{action}",
        endpoint,
        methods=["POST"],
        response_model=SaleOut,
        name=f"{action}_sale",
        summary=f"{action.capitalize()} a sale",
        responses=problems(*CHANGE_PROBLEMS, errors.InvalidTransition, errors.SaleAlreadyStarted, errors.StaleStock),
    )


for _action in TRANSITIONS:
    _transition_route(_action)


@router.post(
    "/sales/{sale_id}/stock",
    response_model=SaleOut,
    responses=problems(*CHANGE_PROBLEMS, errors.InvalidTransition, errors.InvalidSale),
)
async def add_stock(
    request: Request,
    sale_id: SaleId,
    body: AddStock,
    user: AdminUser,
    service: ServiceDep,
    key: OptionalKey = None,
) -> Response:
    """Add units to a sale."""
    return await _once(
        request,
        user,
        key,
        {"sale_id": sale_id, "units": body.units},
        lambda: service.sales.add_stock(actor=user.user_id, sale_id=sale_id, units=body.units),
    )


@router.get("/sales", response_model=list[SaleOut])
async def list_sales(
    user: AdminUser,
    service: ServiceDep,
    state: SaleState | None = None,
    limit: Limit = 100,
    offset: Offset = 0,
) -> list[dict[str, Any]]:
    """All sales, newest first."""
    await service.sales.audit_read(actor=user.user_id, action="list")
    return await service.sales.list_sales(state=state, limit=limit, offset=offset)


@router.get("/sales/{sale_id}", response_model=SaleOut, responses=problems(errors.SaleNotFound))
async def get_sale(sale_id: SaleId, user: AdminUser, service: ServiceDep) -> SaleOut:
    """One sale as recorded."""
    sale = await service.sales.get_sale(sale_id)
    await service.sales.audit_read(actor=user.user_id, action="get", sale_id=sale_id)
    return SaleOut.model_validate(sale)


@router.get(
    "/sales/{sale_id}/stats", response_model=SaleStats, responses=problems(errors.SaleNotFound, errors.StockUnavailable)
)
async def sale_stats(sale_id: SaleId, user: AdminUser, service: ServiceDep) -> SaleStats:
    """Sold, reserved, remaining, attempts by outcome, and when it sold out."""
    stats = await service.sales.stats(sale_id)
    await service.sales.audit_read(actor=user.user_id, action="stats", sale_id=sale_id)
    return stats


AlertId = Annotated[str, Query(pattern=r"^\d{1,19}-\d{1,19}-\d{1,19}$", description="Alerts after this one")]


@router.get(
    "/sales/{sale_id}/alerts",
    response_model=list[SaleAlert],
    responses=problems(errors.SaleNotFound, errors.InvalidSale, errors.StockUnavailable),
)
async def list_sale_alerts(
    sale_id: SaleId, user: AdminUser, service: ServiceDep, after: AlertId | None = None, limit: Limit = 100
) -> list[SaleAlert]:
    """The sale's alerts (stock.low, sale.sold_out, reconciliation.drift), oldest first; page on with `after`."""
    alerts = await sale_alerts(service, sale_id=sale_id, after=after, limit=limit)
    await service.sales.audit_read(actor=user.user_id, action="alerts", sale_id=sale_id)
    return alerts


@router.get("/audit", response_model=list[AuditOut])
async def audit_log(
    user: AdminUser,
    service: ServiceDep,
    sale_id: Annotated[int | None, Query(ge=1, le=2**62)] = None,
    limit: Limit = 100,
    offset: Offset = 0,
) -> list[AuditOut]:
    """Who did what to which sale, and when, newest first."""
    entries = await service.sales.audit_log(sale_id=sale_id, limit=limit, offset=offset)
    await service.sales.audit_read(actor=user.user_id, action="audit", sale_id=sale_id)
    return [AuditOut.model_validate(e) for e in entries]


@router.get("/briefings", response_model=list[BriefingOut])
async def briefings(
    user: AdminUser,
    request: Request,
    service: ServiceDep,
    sale_id: Annotated[int | None, Query(ge=1, le=2**62)] = None,
    limit: Limit = 100,
) -> list[BriefingOut]:
    """The periodic briefings of live sales, newest first (FLASHSALE_BRIEFING_INTERVAL_SECONDS apart)."""
    found = await request.app.state.briefings.recent(sale_id=sale_id, limit=limit)
    await service.sales.audit_read(actor=user.user_id, action="briefings", sale_id=sale_id)
    return [BriefingOut.model_validate(b) for b in found]


@router.get(
    "/reconciliation",
    response_model=list[SaleReconciliation],
    responses=problems(errors.StockUnavailable, INVENTORY_DOWN, ORDERS_DOWN),
)
async def reconcile_all(user: AdminUser, request: Request) -> list[SaleReconciliation]:
    """Every sale not settled yet: quantity = remaining + reserved_unpaid + paid + returned, and drift."""
    reconciler: SaleReconciler = request.app.state.reconciler
    return await reconciler.report_all()


@router.get(
    "/sales/{sale_id}/reconciliation",
    response_model=SaleReconciliation,
    responses=problems(errors.SaleNotFound, errors.StockUnavailable, INVENTORY_DOWN, ORDERS_DOWN),
)
async def reconcile_sale(sale_id: SaleId, user: AdminUser, request: Request) -> SaleReconciliation:
    """One sale's reconciliation: Redis against the order record and the warehouse allocation."""
    reconciler: SaleReconciler = request.app.state.reconciler
    return await reconciler.report(sale_id)


@router.post(
    "/sales/{sale_id}/reconciliation/repair",
    response_model=SaleReconciliation,
    responses=problems(
        errors.SaleNotFound,
        errors.StockUnavailable,
        errors.ReconciliationUnavailable,
        errors.InvalidTransition,
        INVENTORY_DOWN,
        ORDERS_DOWN,
    ),
)
async def repair_sale(sale_id: SaleId, user: AdminUser, request: Request) -> SaleReconciliation:
    """Rebuild the sale's Redis counters (remaining, reserved, sold, per-user counts, reservations) from
    the order record, e.g. after Redis lost data; reservations still in flight are kept. Audited."""
    reconciler: SaleReconciler = request.app.state.reconciler
    return await reconciler.repair(sale_id, actor=user.user_id)
