"""Storefront endpoints: list sales, a sale's live detail, and the purchase."""

from __future__ import annotations

import functools
from typing import Annotated, Any

import orjson
from fastapi import APIRouter, Path, Request
from fastapi.exceptions import RequestValidationError
from opentelemetry.trace import SpanKind, Tracer
from pydantic import ValidationError
from starlette.responses import Response

from services.common import tracing
from services.common.auth import CurrentUser, Principal, principal
from services.common.idempotency import IdempotencyKey, fingerprint, idempotency_key
from services.common.openapi import problems
from services.flashsale import errors
from services.flashsale.allowance import buyer_allowance
from services.flashsale.deps import ServiceDep
from services.flashsale.schemas import (
    MAX_UNITS_PER_PURCHASE,
    BuyerAllowance,
    PurchaseAccepted,
    PurchaseRequest,
    SaleView,
)
from services.flashsale.service import FlashSaleService

router = APIRouter(tags=["storefront"])

MAX_SALE_ID = 2**62
MEMBER_ROLE = "member"
SaleId = Annotated[int, Path(ge=1, le=MAX_SALE_ID, description="Sale id")]

PURCHASE_PROBLEMS = problems(
    errors.SaleNotFound,
    errors.SoldOut,
    errors.InsufficientStock,
    errors.SaleNotLive,
    errors.PurchaseLimitExceeded,
    errors.RateLimited,
    errors.StockUnavailable,
)


@router.get("/sales", response_model=list[SaleView], responses=problems(errors.StockUnavailable))
async def list_sales(service: ServiceDep) -> list[SaleView]:
    """Live and upcoming sales."""
    return await service.storefront.list_public()


@router.get(
    "/sales/{sale_id}", response_model=SaleView, responses=problems(errors.SaleNotFound, errors.StockUnavailable)
)
async def get_sale(sale_id: SaleId, service: ServiceDep) -> SaleView:
    """A sale with server time, countdown and remaining stock."""
    return await service.storefront.view(sale_id)


@router.get(
    "/sales/{sale_id}/me",
    response_model=BuyerAllowance,
    responses=problems(errors.SaleNotFound, errors.StockUnavailable),
)
async def my_allowance(sale_id: SaleId, user: CurrentUser, service: ServiceDep) -> BuyerAllowance:
    """The caller's own numbers in a sale: units bought, the per-user limit, and how many more they may buy."""
    return await buyer_allowance(service.core, sale_id=sale_id, user_id=user.user_id)


@functools.cache
def _purchase_fingerprint(quantity: int) -> str:
    return fingerprint({"quantity": quantity})


async def read_purchase(request: Request) -> PurchaseRequest | int:
    """The purchase body: a bare quantity on the fast path, else the validated model (with coupons)."""
    raw = await request.body()
    try:
        data: Any = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise RequestValidationError(
            [{"type": "json_invalid", "loc": ("body",), "msg": "JSON decode error", "input": {}}]
        ) from None
    if type(data) is dict and len(data) == 1:
        quantity = data.get("quantity")
        if type(quantity) is int and 1 <= quantity <= MAX_UNITS_PER_PURCHASE:
            return quantity
    try:
        return PurchaseRequest.model_validate(data)
    except ValidationError as exc:
        raise RequestValidationError(
            [{**e, "loc": ("body", *e["loc"])} for e in exc.errors(include_url=False)]
        ) from None


@router.post(
    "/sales/{sale_id}/purchase",
    status_code=202,
    response_model=PurchaseAccepted,
    responses=PURCHASE_PROBLEMS,
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": PurchaseRequest.model_json_schema()}},
        },
    },
)
async def purchase(
    sale_id: SaleId,
    request: Request,
    user: CurrentUser,
    key: IdempotencyKey,
    service: ServiceDep,
) -> Response:
    """Reserve units of a live sale; the order is created from the reservation.

    Body: `{"quantity": n}` with 1 <= n <= 100 (and at most the sale's per-user limit).
    """
    return await _purchase(request, sale_id, user, key, service)


async def purchase_hot_path(request: Request) -> Response:
    """The same purchase on a plain Starlette route (mounted first by main.py for `{sale_id:int}` paths).

    It keeps the contract of `purchase` above (which stays in the OpenAPI document and answers every
    other path, e.g. a non-numeric id with 422) but skips FastAPI's per-request dependency machinery,
    which costs more CPU than the purchase decision itself.
    """
    sale_id: int = request.path_params["sale_id"]
    if not 1 <= sale_id <= MAX_SALE_ID:
        raise RequestValidationError(
            [{"type": "less_than_equal", "loc": ("path", "sale_id"), "msg": "Unknown sale id", "input": sale_id}]
        )
    user = await principal(request)
    key = await idempotency_key(request)
    return await _purchase(request, sale_id, user, key, request.app.state.service)


async def _purchase(request: Request, sale_id: int, user: Principal, key: str, service: FlashSaleService) -> Response:
    tracer = tracing.TRACER
    if tracer is None:
        return await _reserve(request, sale_id, user, key, service, "")
    return await _traced_purchase(tracer, request, sale_id, user, key, service)


async def _traced_purchase(
    tracer: Tracer, request: Request, sale_id: int, user: Principal, key: str, service: FlashSaleService
) -> Response:
    """The purchase inside a flashsale span (child of the caller's traceparent); its event carries the span's."""
    incoming = tracing.valid_traceparent(request.headers.get("traceparent"))
    span, traceparent = tracing.begin(tracer, "flashsale purchase", incoming, SpanKind.SERVER)
    if span is None:  # not sampled: the event carries the context all the same, so the order side knows
        return await _reserve(request, sale_id, user, key, service, traceparent)
    try:
        response = await _reserve(request, sale_id, user, key, service, traceparent)
    except Exception as exc:
        # A refusal (sold out, limit) is an answer, not a failure of the span: its code is recorded instead.
        span.set_attribute("error.type", str(getattr(exc, "code", None) or type(exc).__name__))
        raise
    else:
        span.set_attribute("http.response.status_code", response.status_code)
        return response
    finally:
        span.set_attribute("flashsale.sale_id", sale_id)
        span.end()


async def _reserve(
    request: Request, sale_id: int, user: Principal, key: str, service: FlashSaleService, traceparent: str
) -> Response:
    body = await read_purchase(request)
    if isinstance(body, int):
        quantity, extra, request_fingerprint = body, "", _purchase_fingerprint(body)
    else:
        quantity = body.quantity
        # The order service prices the order with these coupons; members may get member-only offers.
        fields = {"coupon_ids": body.coupon_ids, "member": MEMBER_ROLE in user.roles} if body.coupon_ids else {}
        extra = orjson.dumps(fields).decode() if fields else ""
        request_fingerprint = fingerprint(body.model_dump()) if body.coupon_ids else _purchase_fingerprint(quantity)
    reservation_id, quantity = await service.purchase(
        sale_id=sale_id,
        user_id=user.user_id,
        quantity=quantity,
        idempotency=key,
        request_fingerprint=request_fingerprint,
        event_extra=extra,
        traceparent=traceparent,
    )
    answer = {
        "reservation_id": reservation_id,
        "sale_id": sale_id,
        "quantity": quantity,
        "status": "reserved",
        "status_url": f"/api/order/orders/by-reservation/{reservation_id}",
    }
    return Response(orjson.dumps(answer), status_code=202, media_type="application/json")
