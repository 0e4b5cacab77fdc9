"""The OpenAPI document itself, as a client generator reads it: problem+json errors with one schema, bearer auth
declared where a token is needed, required headers as parameters, and a 405 that names every method of a path."""

from __future__ import annotations

from typing import Any

import httpx
from fastapi import FastAPI

from services.common.errors import PROBLEM_JSON
from services.coupon.main import create_app as create_coupon
from services.inventory.main import create_app as create_inventory
from services.order.main import create_app as create_order
from services.paysim.main import create_app as create_paysim
from tests.conftest import admin_headers

PROBLEM = {"$ref": "#/components/schemas/Problem"}


def document_of(app: FastAPI) -> dict[str, Any]:
    """The app's OpenAPI document."""
    return app.openapi()


def operations(document: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    """(method, path, operation) of every operation."""
    return [(m, p, op) for p, item in document["paths"].items() for m, op in item.items()]


async def test_every_error_of_every_operation_is_documented_as_problem_json_with_the_problem_schema(
    app: FastAPI,
) -> None:
    for document in (document_of(app), document_of(create_order()), document_of(create_paysim())):
        assert document["components"]["schemas"]["Problem"]["required"] == ["type", "title", "status", "code", "detail"]
        for method, path, operation in operations(document):
            errors = {status: r for status, r in operation["responses"].items() if int(status) >= 400}
            assert errors, (method, path)
            for status, response in errors.items():
                assert response["content"] == {PROBLEM_JSON: {"schema": PROBLEM}}, (method, path, status)
                assert response["x-problem-codes"], (method, path, status)


async def test_fastapi_validation_errors_are_documented_as_our_problem_not_its_own_schema(app: FastAPI) -> None:
    document = document_of(app)
    assert "HTTPValidationError" not in document["components"]["schemas"]
    responses = document["paths"]["/sales/{sale_id}"]["get"]["responses"]
    assert "VALIDATION_ERROR" in responses["422"]["x-problem-codes"]


async def test_operations_that_need_a_token_declare_bearer_auth_and_admin_ones_say_so(app: FastAPI) -> None:
    document = document_of(app)
    assert document["components"]["securitySchemes"]["bearerAuth"] == {
        "type": "http",
        "scheme": "bearer",
        "bearerFormat": "JWT",
    }
    paths = document["paths"]
    assert "security" not in paths["/sales"]["get"]  # the storefront's list is public
    purchase = paths["/sales/{sale_id}/purchase"]["post"]
    assert purchase["security"] == [{"bearerAuth": []}]
    assert set(purchase["responses"]) >= {"202", "400", "401", "409", "413", "415", "422", "423", "429", "503"}
    admin = paths["/admin/sales"]["post"]
    assert admin["security"] == [{"bearerAuth": []}]
    assert "admin role" in admin["description"]
    assert "FORBIDDEN" in admin["responses"]["403"]["x-problem-codes"]


async def test_idempotency_key_is_a_required_header_on_purchase_pay_cancel_claim_and_holds(app: FastAPI) -> None:
    keyed = {
        "flashsale": (document_of(app), [("post", "/sales/{sale_id}/purchase")]),
        "order": (
            document_of(create_order()),
            [("post", "/orders/{order_id}/pay"), ("post", "/orders/{order_id}/cancel")],
        ),
        "coupon": (document_of(create_coupon()), [("post", "/templates/{template_id}/claim")]),
        "inventory": (document_of(create_inventory()), [("post", "/holds")]),
    }
    for document, routes in keyed.values():
        for method, path in routes:
            operation = document["paths"][path][method]
            headers = [p for p in operation["parameters"] if p["in"] == "header" and p["name"] == "Idempotency-Key"]
            assert len(headers) == 1 and headers[0]["required"] is True, (method, path)
            assert "IDEMPOTENCY_KEY_REQUIRED" in operation["responses"]["400"]["x-problem-codes"], (method, path)


async def test_each_service_names_the_gateway_prefix_it_is_reached_under(app: FastAPI) -> None:
    assert document_of(app)["servers"] == [{"url": "/api/flashsale"}]
    assert document_of(create_order())["servers"] == [{"url": "/api/order"}]
    assert document_of(create_paysim())["servers"] == [{"url": "/"}]  # called directly, not through the gateway


async def test_a_method_a_path_does_not_have_is_answered_405_with_every_method_it_has(
    client: httpx.AsyncClient,
) -> None:
    resp = await client.delete("/admin/sales/1", headers=admin_headers())
    assert resp.status_code == 405
    assert resp.headers["content-type"] == PROBLEM_JSON
    assert resp.json()["code"] == "METHOD_NOT_ALLOWED"
    assert resp.headers["allow"] == "GET, PATCH"  # two routes share the path
