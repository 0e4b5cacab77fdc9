"""Paysim's domain errors, each with a stable code and its own status."""

from __future__ import annotations

from services.common.errors import ProblemError


class PaymentDeclined(ProblemError):
    status = 402
    code = "PAYMENT_DECLINED"
    title = "Payment declined"


class PaymentNotFound(ProblemError):
    status = 404
    code = "PAYMENT_NOT_FOUND"
    title = "Payment not found"


class ProviderError(ProblemError):
    status = 500
    code = "PROVIDER_ERROR"
    title = "Payment provider error"


class ProviderDown(ProblemError):
    status = 503
    code = "PROVIDER_DOWN"
    title = "Payment provider unavailable"

    def __init__(self, detail: str) -> None:
        super().__init__(detail, headers={"Retry-After": "1"})
