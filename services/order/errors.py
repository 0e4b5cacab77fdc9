"""The order service's domain errors, each with a stable code."""

from __future__ import annotations

from services.common.errors import ProblemError


class OrderNotFound(ProblemError):
    status = 404
    code = "ORDER_NOT_FOUND"
    title = "Order not found"


class InvalidOrderState(ProblemError):
    status = 409
    code = "INVALID_ORDER_STATE"
    title = "The order cannot do that in its current state"


class OrderExpired(ProblemError):
    status = 409
    code = "ORDER_EXPIRED"
    title = "The payment deadline has passed"


class PaymentDeclined(ProblemError):
    status = 402
    code = "PAYMENT_DECLINED"
    title = "The payment was declined"


class PaymentUnavailable(ProblemError):
    status = 503
    code = "PAYMENT_UNAVAILABLE"
    title = "No payment provider could take the payment; the order stays payable"


class PricingPending(ProblemError):
    status = 409
    code = "ORDER_PRICING_PENDING"
    title = "The order is being priced with its coupons; retry shortly"


class PaymentInProgress(ProblemError):
    status = 409
    code = "PAYMENT_IN_PROGRESS"
    title = "A payment of this order is in flight; retry once it has an outcome"


class OrderClosed(ProblemError):
    status = 409
    code = "ORDER_CLOSED"
    title = "The order closed before the charge landed; the charge is refunded automatically"


class OfflineChannelOpen(ProblemError):
    status = 409
    code = "OFFLINE_CHANNEL_OPEN"
    title = "The sale's offline payment channel is open already"


class PaymentProvidersAvailable(ProblemError):
    status = 409
    code = "PAYMENT_PROVIDERS_AVAILABLE"
    title = "A payment provider takes payments: the offline channel opens only while every provider is down"


class NoOfflineChannel(ProblemError):
    status = 409
    code = "NO_OFFLINE_CHANNEL"
    title = "The order's sale has no offline payment channel"


class OfflinePaymentConflict(ProblemError):
    status = 409
    code = "OFFLINE_PAYMENT_CONFLICT"
    title = "The order was paid offline with another reference"
