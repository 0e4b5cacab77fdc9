"""/admin endpoints: fault injection for drills. Admin role required; every change is audited."""

from __future__ import annotations

import logging
from collections import deque
from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request

from services.common.auth import AdminUser
from services.common.logs import request_id_var
from services.paysim.deps import FaultsDep
from services.paysim.faults import FaultState
from services.paysim.schemas import AuditEntry, FaultsOut, FaultsPatch

router = APIRouter(prefix="/admin", tags=["admin"])
audit_log = logging.getLogger("paysim.audit")


async def _audit_trail(request: Request) -> deque[dict[str, Any]]:
    trail: deque[dict[str, Any]] = request.app.state.audit
    return trail


AuditTrail = Annotated[deque[dict[str, Any]], Depends(_audit_trail)]


def _record(trail: deque[dict[str, Any]], actor: str, action: str, before: dict[str, Any], faults: FaultState) -> None:
    entry = {
        "at": datetime.now(UTC).isoformat(),
        "actor": actor,
        "action": action,
        "before": before,
        "after": faults.as_json(),
        "request_id": request_id_var.get() or None,
    }
    trail.append(entry)
    audit_log.info("%s by %s", action, actor, extra={"audit": entry})


@router.get("/faults", response_model=FaultsOut)
async def get_faults(user: AdminUser, faults: FaultsDep) -> dict[str, Any]:
    """The faults injected right now."""
    return faults.as_json()


@router.put("/faults", response_model=FaultsOut)
async def set_faults(body: FaultsPatch, user: AdminUser, faults: FaultsDep, trail: AuditTrail) -> dict[str, Any]:
    """Change some faults (`error_rate` 0..1, `latency_ms` 0..60000 after a charge, `processing_ms` 0..60000
    before it, `down`); omitted fields stay as they are."""
    before = faults.as_json()
    faults.update(body, actor=user.user_id)
    _record(trail, user.user_id, "faults.set", before, faults)
    return faults.as_json()


@router.delete("/faults", response_model=FaultsOut)
async def reset_faults(user: AdminUser, faults: FaultsDep, trail: AuditTrail) -> dict[str, Any]:
    """Clear every fault: a healthy provider again."""
    before = faults.as_json()
    faults.reset(actor=user.user_id)
    _record(trail, user.user_id, "faults.reset", before, faults)
    return faults.as_json()


@router.get("/audit", response_model=list[AuditEntry])
async def get_audit(user: AdminUser, trail: AuditTrail) -> list[dict[str, Any]]:
    """The latest admin actions on this process, newest first."""
    return list(reversed(trail))
