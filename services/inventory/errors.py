"""The inventory service's domain errors, each with a stable code."""

from __future__ import annotations

from services.common.errors import ProblemError


class SkuNotFound(ProblemError):
    status = 404
    code = "SKU_NOT_FOUND"
    title = "SKU not found"


class SkuExists(ProblemError):
    status = 409
    code = "SKU_EXISTS"
    title = "A SKU with this code already exists"


class InsufficientStock(ProblemError):
    status = 409
    code = "INSUFFICIENT_STOCK"
    title = "Not enough available stock"


class StockLimitExceeded(ProblemError):
    status = 422
    code = "STOCK_LIMIT_EXCEEDED"
    title = "The change would take on-hand stock past the largest amount recorded"


class AllocationNotFound(ProblemError):
    status = 404
    code = "ALLOCATION_NOT_FOUND"
    title = "No allocation of this SKU to this sale"


class AllocationExceeded(ProblemError):
    status = 409
    code = "ALLOCATION_EXCEEDED"
    title = "More units than the sale still holds of its allocation"


class HoldNotFound(ProblemError):
    status = 404
    code = "HOLD_NOT_FOUND"
    title = "Hold not found"


class HoldExpired(ProblemError):
    status = 409
    code = "HOLD_EXPIRED"
    title = "The hold ran out of time; its units went back to stock"


class HoldNotActive(ProblemError):
    status = 409
    code = "HOLD_NOT_ACTIVE"
    title = "The hold was already confirmed or released"


class InvalidHold(ProblemError):
    status = 422
    code = "VALIDATION_ERROR"
    title = "Invalid hold"


class InvalidThreshold(ProblemError):
    status = 422
    code = "VALIDATION_ERROR"
    title = "Invalid low-stock threshold"
