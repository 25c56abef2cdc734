"""The OpenAPI document lists the error answers, so generated clients handle them."""

from __future__ import annotations

from typing import Any

from tests.conftest import Api


def _responses(doc: dict[str, Any], path: str, method: str) -> dict[str, Any]:
    return doc["paths"][path][method]["responses"]  # type: ignore[no-any-return]


def test_every_api_route_documents_its_error_answers(api: Api) -> None:
    doc = api.anonymous.get("/openapi.json").json()
    ref = {"$ref": "#/components/schemas/ErrorBody"}
    one = _responses(doc, "/api/v1/machines/{ident}", "get")
    assert {"200", "401", "403", "404", "422", "503"} <= set(one)
    assert one["404"]["content"]["application/json"]["schema"] == ref
    allocate = _responses(doc, "/api/v1/allocations", "post")
    assert {"400", "401", "403", "409", "413", "422", "429", "503"} <= set(allocate)
    error = doc["components"]["schemas"]["ErrorDetail"]
    assert {"code", "message", "hint"} <= set(error["required"])
    for path, methods in doc["paths"].items():
        if not path.startswith("/api/v1/"):
            continue
        for method, spec in methods.items():
            codes = set(spec["responses"])
            assert {"401", "503"} <= codes, (method, path, codes)
            if "{" in path:
                assert "404" in codes, (method, path, codes)
