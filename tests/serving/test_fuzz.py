"""Schemathesis fuzzes every operation of the OpenAPI schema: no input may produce a 5xx."""

from __future__ import annotations

import pytest

schemathesis = pytest.importorskip("schemathesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402


def test_openapi_fuzz_has_no_server_errors(built, tmp_path, monkeypatch) -> None:
    from serving.app import API_KEY_ENV, create_app
    from serving.variants import VariantPool

    monkeypatch.setenv(API_KEY_ENV, "fuzz-key")
    path, pool = built
    config = pool.config.model_copy(deep=True)
    config.service.event_log = tmp_path / "events.db"
    app = create_app(config, None, VariantPool(config, pool.variants))
    schema = schemathesis.openapi.from_asgi("/openapi.json", app)
    failures, statuses = [], []
    operations = [result.ok() for result in schema.get_all_operations()]
    assert {op.label for op in operations} >= {"POST /search", "POST /feedback", "GET /variants", "POST /admin/promote"}
    for operation in operations:
        @settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck), database=None)
        @given(operation.as_strategy())
        def run(case) -> None:
            response = case.call()
            statuses.append(response.status_code)
            if response.status_code >= 500:
                failures.append((case.operation.label, case.body, response.status_code, response.text[:200]))

        run()
    assert not failures, failures[:5]
    assert len(statuses) > 100 and 200 in statuses and any(400 <= s < 500 for s in statuses)
