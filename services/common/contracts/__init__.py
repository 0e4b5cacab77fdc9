"""The contracts between the services, as code: event types and their versioned payloads, the streams
that carry them and who reads them, the shared stream names and key builders, the purchase script's
answers. docs/events.md describes the same, stream by stream; a test holds the two together.

Import from here (`from services.common.contracts import EventType, encode_event, purchase_stream`), and
the payload models from `services.common.contracts.events`.
"""

from services.common.contracts.catalog import STREAMS, StreamSpec
from services.common.contracts.entries import ContractViolation, decode_event, encode_event, validate_entry
from services.common.contracts.events import EVENT_VERSIONS, EventType
from services.common.contracts.keys import (
    ALERTS_STREAM,
    CLAIM_STREAM_REGISTRY,
    ORDER_EVENTS_STREAM,
    PURCHASE_STREAM_REGISTRY,
    ConsumerGroup,
    claim_stream,
    dead_letter_stream,
    purchase_stream,
    sale_alert_stream,
    sale_tag,
    template_tag,
)
from services.common.contracts.purchase import PurchaseDecision

__all__ = [
    "ALERTS_STREAM",
    "CLAIM_STREAM_REGISTRY",
    "EVENT_VERSIONS",
    "ORDER_EVENTS_STREAM",
    "PURCHASE_STREAM_REGISTRY",
    "STREAMS",
    "ConsumerGroup",
    "ContractViolation",
    "EventType",
    "PurchaseDecision",
    "StreamSpec",
    "claim_stream",
    "dead_letter_stream",
    "decode_event",
    "encode_event",
    "purchase_stream",
    "sale_alert_stream",
    "sale_tag",
    "template_tag",
    "validate_entry",
]
