"""The coupon service's domain errors, each with a stable code."""

from __future__ import annotations

from typing import Any

import httpx

from services.common.errors import ProblemError


class TemplateNotFound(ProblemError):
    status = 404
    code = "TEMPLATE_NOT_FOUND"
    title = "Coupon template not found"


class InvalidTemplate(ProblemError):
    status = 422
    code = "VALIDATION_ERROR"
    title = "Invalid coupon template"


class CouponsExhausted(ProblemError):
    status = 409
    code = "COUPONS_EXHAUSTED"
    title = "No coupons of this template are left"


class ClaimLimitReached(ProblemError):
    status = 403
    code = "CLAIM_LIMIT_REACHED"
    title = "Per-user claim limit reached"


class ClaimWindowClosed(ProblemError):
    status = 423
    code = "CLAIM_WINDOW_CLOSED"
    title = "This coupon cannot be claimed now"


class ClaimUnavailable(ProblemError):
    status = 503
    code = "COUPON_UNAVAILABLE"
    title = "Coupon claims are unavailable; retry with the same Idempotency-Key"


class InvalidRefund(ProblemError):
    status = 422
    code = "INVALID_REFUND"
    title = "The refunded lines do not match the order"


class OrdersUnavailable(ProblemError):
    status = 503
    code = "ORDERS_UNAVAILABLE"
    title = "The order service did not answer"


class OrdersRefused(ProblemError):
    status = 422
    code = "ORDERS_REFUSED"
    title = "The order service refused the question"

    @classmethod
    def of(cls, response: httpx.Response) -> OrdersRefused:
        """The order service's refusal, with its status and code, passed on to the caller."""
        try:
            body: Any = response.json()
        except ValueError:
            body = {}
        upstream = body if isinstance(body, dict) else {}
        detail = str(upstream.get("detail") or response.reason_phrase)[:300]
        return cls(
            f"The order service answered {response.status_code}: {detail}; nothing was issued",
            extra={"upstream_status": response.status_code, "upstream_code": upstream.get("code")},
        )
