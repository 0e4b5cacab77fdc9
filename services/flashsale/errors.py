"""Flashsale's domain errors, each with a stable code and its own status."""

from __future__ import annotations

from services.common.errors import ProblemError


class SaleNotFound(ProblemError):
    status = 404
    code = "SALE_NOT_FOUND"
    title = "Sale not found"


class SoldOut(ProblemError):
    status = 409
    code = "SOLD_OUT"
    title = "Sold out"


class InsufficientStock(ProblemError):
    status = 409
    code = "INSUFFICIENT_STOCK"
    title = "Not enough stock left for this quantity"


class SaleNotLive(ProblemError):
    status = 423
    code = "SALE_NOT_LIVE"
    title = "Sale is not live"


class PurchaseLimitExceeded(ProblemError):
    status = 403
    code = "PURCHASE_LIMIT_EXCEEDED"
    title = "Per-user purchase limit reached"


class RateLimited(ProblemError):
    status = 429
    code = "RATE_LIMITED"
    title = "Too many purchase attempts"


class InvalidTransition(ProblemError):
    status = 409
    code = "INVALID_STATE_TRANSITION"
    title = "The sale cannot do that in its current state"


class SaleAlreadyStarted(ProblemError):
    status = 409
    code = "SALE_ALREADY_STARTED"
    title = "The sale has started and can no longer be edited"


class StockUnavailable(ProblemError):
    status = 503
    code = "STOCK_UNAVAILABLE"
    title = "Stock service unavailable"


class InvalidSale(ProblemError):
    status = 422
    code = "VALIDATION_ERROR"
    title = "Invalid sale"


class StaleStock(ProblemError):
    status = 409
    code = "STALE_STOCK_STATE"
    title = "Redis holds stock of another sale with this id"


class DependencyUnavailable(ProblemError):
    """Another service (inventory, order) could not answer; the change was not made."""

    status = 503
    code = "DEPENDENCY_UNAVAILABLE"
    title = "A service this needs is unavailable"


class DependencyRefused(ProblemError):
    """Another service refused the change (e.g. the warehouse has too few units); its code is kept."""

    status = 409
    code = "REFUSED"
    title = "Refused by the warehouse"


class ReconciliationUnavailable(ProblemError):
    status = 409
    code = "RECONCILIATION_UNAVAILABLE"
    title = "Reconciliation needs the order service"
