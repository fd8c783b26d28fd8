"""Operational endpoints."""

from tests.conftest import Env


def test_healthz_process_up_ok(env: Env) -> None:
    assert env.client.get("/healthz").json() == {"status": "ok"}


def test_readyz_database_reachable_ok(env: Env) -> None:
    response = env.client.get("/readyz")
    assert response.status_code == 200


def test_metrics_after_requests_counts_routes(env: Env) -> None:
    env.client.get("/healthz")
    body = env.client.get("/metrics").text
    assert 'idhub_http_requests_total{method="GET",route="/healthz",status="200"}' in body
    assert "idhub_http_request_duration_seconds_bucket" in body


def test_json_response_nosniff_only(env: Env) -> None:
    response = env.client.get("/healthz")
    assert response.headers["x-content-type-options"] == "nosniff"
    assert "x-frame-options" not in response.headers


def test_non_json_response_page_security_headers_present(env: Env) -> None:
    response = env.client.get("/metrics")
    assert response.headers["x-content-type-options"] == "nosniff"
    assert response.headers["x-frame-options"] == "DENY"
    assert response.headers["referrer-policy"] == "no-referrer"
    assert "frame-ancestors 'none'" in response.headers["content-security-policy"]


def test_started_app_heap_frozen(env: Env) -> None:
    # bench/README.md "Tail latency": what start-up built is frozen (gc.freeze), so a full collection
    # only walks what requests allocated since; with the start-up heap in it, one took 85-95 ms.
    import gc

    assert gc.get_freeze_count() > 10_000


def test_readyz_schema_behind_is_not_ready_and_ahead_still_serves(env: Env) -> None:
    from sqlalchemy import text

    from idhub.storage.migrate import head_revision, lineage

    head = head_revision()
    older = lineage(head)[1]

    async def set_revision(revision: str) -> None:
        async with env.ctx.engine.begin() as connection:
            await connection.execute(text("UPDATE alembic_version SET version_num = :r"), {"r": revision})

    try:
        env.run(set_revision, older)
        behind = env.client.get("/readyz")
        assert behind.status_code == 503 and behind.json()["schema"] == "behind"
        env.run(set_revision, "f00dface")  # a revision a newer release wrote
        ahead = env.client.get("/readyz")
        assert ahead.status_code == 200 and ahead.json()["schema"] == "ahead"
    finally:
        env.run(set_revision, head)
    assert env.client.get("/readyz").json()["schema"] == "ok"
