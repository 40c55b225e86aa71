"""GET /audit, GET /audit/{assessment_id}, POST /assessments/{assessment_id}/verdict against the real app and a
tiny checkpoint, on SQLite and a real PostgreSQL: every decision of /assess and STOW-RS is recorded with the
fields its answer had; filters, pages and the CSV export agree; verdicts keep their history and are counted; the
retention task deletes old records; and a PostgreSQL stopped during 200 assessments loses none of them."""

from __future__ import annotations

import asyncio
import csv
import io
import threading
import time
from datetime import UTC, datetime, timedelta

import pytest
from pydicom.uid import generate_uid

from load_tests.driver import _sum_matching, parse_metrics
from service.app import create_app
from service.db import queries
from service.db.audit import row_of
from service.db.store import Store
from service.dicomweb.multipart import build_multipart_related
from tests.helpers import png_bytes, radiograph, running_app, settings_for
from tests.service.db.test_audit_trail import decision
from tests.service.dicom_factory import chest_like, dx_instance

PNG = {"content-type": "image/png"}


def metric(text: str, name: str, **labels: str) -> float:
    return _sum_matching(parse_metrics(text), name, **labels)


async def wait_for_records(client, count: int, timeout_s: float = 30.0, **params) -> list[dict]:
    deadline = time.monotonic() + timeout_s
    while True:
        records = (await client.get("/audit", params={"limit": 1000, **params})).json()["records"]
        if len(records) >= count or time.monotonic() > deadline:
            return records
        await asyncio.sleep(0.05)


def test_decisions_are_recorded_queried_exported_and_judged(models_dir, store_url):
    app = create_app(settings_for(models_dir, database_url=store_url))
    images = [png_bytes(radiograph(70 + i, 64, seed=i, spot=(30, 20) if i % 2 else None)) for i in range(5)]
    study = generate_uid()
    dicom = dx_instance(chest_like(80, 72, seed=4), study_uid=study)

    async def scenario():
        async with running_app(app) as client:
            answers = [
                (await client.post("/assess", content=body, headers=PNG, params={"heatmap": h})).json()
                for body, h in zip(images, ["png", "none", "png", "none", "png"])
            ]
            body, content_type = build_multipart_related([dicom], "b0undary")
            stowed = await client.post(
                f"/dicomweb/studies/{study}",
                content=body,
                headers={"content-type": content_type, "accept": "application/json"},
            )
            assert stowed.status_code == 200, stowed.text
            answers.append(stowed.json()["results"][0]["assessment"])
            records = await wait_for_records(client, 6)

            # Each record is what its answer said.
            by_id = {r["assessment_id"]: r for r in records}
            assert len(records) == 6 and set(by_id) == {a["assessment_id"] for a in answers}
            for answer in answers:
                record = by_id[answer["assessment_id"]]
                assert record["probability"] == answer["probability"]
                assert record["decision"] == answer["decision"] and record["threshold"] == answer["threshold"]
                assert record["model_name"] == "default" and record["model_version"] == answer["model"]["version"]
                assert record["point_x"] == (answer["point"] or {}).get("x")
                assert record["method"] == (answer["heatmap"] or {}).get("method")
                assert record["latency_ms"] == answer["timings_ms"]["total"]
                assert len(record["weights_sha256"]) == 64 and record["client"] == "127.0.0.1"
            stow_record = by_id[answers[-1]["assessment_id"]]
            assert stow_record["source"] == "stow" and stow_record["study_instance_uid"] == study
            assert stow_record["assessment_id"].endswith("-0")
            assert by_id[answers[0]["assessment_id"]]["study_instance_uid"] is None

            # Newest first; filters; pages.
            times = [datetime.fromisoformat(r["time"]) for r in records]
            assert times == sorted(times, reverse=True)
            only_stow = (await client.get("/audit", params={"study_instance_uid": study})).json()
            assert [r["assessment_id"] for r in only_stow["records"]] == [stow_record["assessment_id"]]
            reacquire = (await client.get("/audit", params={"decision": "reacquire"})).json()["records"]
            assert {r["assessment_id"] for r in reacquire} == {
                a["assessment_id"] for a in answers if a["decision"] == "reacquire"
            }
            since = (await client.get("/audit", params={"since": records[2]["time"]})).json()["records"]
            assert [r["assessment_id"] for r in since] == [r["assessment_id"] for r in records[:3]]
            paged, cursor = [], None
            while True:
                page = (
                    await client.get("/audit", params={"limit": 4, **({"cursor": cursor} if cursor else {})})
                ).json()
                paged += page["records"]
                cursor = page["next_cursor"]
                if cursor is None:
                    break
            assert paged == records
            assert (await client.get("/audit", params={"cursor": "garbage"})).status_code == 422
            assert (await client.get("/audit", params={"decision": "maybe"})).status_code == 422

            # Verdicts: recorded, superseded with history kept, counted.
            target = answers[1]["assessment_id"]
            first = await client.post(f"/assessments/{target}/verdict", json={"verdict": "agree"})
            assert first.status_code == 201, first.text
            assert first.json()["supersedes"] is None and first.json()["verdict"]["verdict"] == "agree"
            second = await client.post(
                f"/assessments/{target}/verdict", json={"verdict": "wrong_location", "note": "=lower left"}
            )
            assert second.json()["supersedes"]["verdict"] == "agree"
            detail = (await client.get(f"/audit/{target}")).json()
            assert [v["verdict"] for v in detail["verdicts"]] == ["agree", "wrong_location"]
            assert detail["verdict"]["verdict"] == "wrong_location" and detail["verdict"]["note"] == "=lower left"
            assert (await client.post(f"/assessments/{target}/verdict", json={"verdict": "maybe"})).status_code == 422
            unknown = await client.post("/assessments/nope/verdict", json={"verdict": "agree"})
            assert unknown.status_code == 404 and unknown.json()["error"] == "not_found"
            assert (await client.get("/audit/nope")).status_code == 404

            # The CSV export is the same records, every one, with the current verdict.
            exported = await client.get("/audit", headers={"accept": "text/csv"})
            assert exported.headers["content-type"].startswith("text/csv")
            rows = list(csv.DictReader(io.StringIO(exported.text)))
            assert [r["assessment_id"] for r in rows] == [r["assessment_id"] for r in records]
            judged = next(r for r in rows if r["assessment_id"] == target)
            assert judged["verdict"] == "wrong_location" and judged["verdict_note"] == "'=lower left"
            for row, record in zip(rows, records):
                assert (float(row["probability"]) if row["probability"] else None) == record["probability"]
                assert datetime.fromisoformat(row["time"]) == datetime.fromisoformat(record["time"])

            text = (await client.get("/metrics")).text
            assert metric(text, "normgate_verdicts_total", model="default", verdict="agree") == 1
            assert metric(text, "normgate_verdicts_total", model="default", verdict="wrong_location") == 1
            with_probability = [a for a in answers if a["probability"] is not None]
            assert metric(text, "normgate_probability_count", model="default") == len(with_probability)
            assert metric(text, "normgate_probability_sum", model="default") == pytest.approx(
                sum(a["probability"] for a in with_probability)
            )
            assert metric(text, "normgate_audit_spool_depth") == 0

    asyncio.run(scenario())


def test_audit_disabled_records_nothing_and_retention_runs_at_start(models_dir, tmp_path):
    url = f"sqlite:///{tmp_path / 'normgate.sqlite3'}"
    store = Store(url)
    store.ensure_schema()
    old, recent = datetime.now(UTC) - timedelta(days=40), datetime.now(UTC) - timedelta(days=20)
    queries.insert_records(store.engine, [row_of(decision(1, time=old)), row_of(decision(2, time=recent))])
    store.dispose()
    app = create_app(settings_for(models_dir, database_url=url, audit_enabled=False, audit_retention_days=30))

    async def scenario():
        async with running_app(app) as client:
            answer = (await client.post("/assess", content=png_bytes(radiograph(64, 64)), headers=PNG)).json()
            await asyncio.sleep(0.5)
            records = (await client.get("/audit")).json()["records"]
            assert [r["assessment_id"] for r in records] == ["a00002"]  # a00001 was past retention
            assert (await client.get(f"/audit/{answer['assessment_id']}")).status_code == 404

    asyncio.run(scenario())


def test_postgres_stopped_during_200_assessments_loses_none(models_dir, postgres_server, postgres_url):
    app = create_app(settings_for(models_dir, database_url=postgres_url, max_batch_size=8))
    body = png_bytes(radiograph(64, 64, seed=9))
    stopped = threading.Event()

    async def scenario():
        async with running_app(app) as client:

            async def assess(i: int) -> str:
                if i == 40:  # the database goes away while assessments keep coming
                    await asyncio.to_thread(postgres_server.stop)
                    stopped.set()
                answer = await client.post("/assess", content=body, headers=PNG, params={"heatmap": "none"})
                assert answer.status_code == 200
                return answer.json()["assessment_id"]

            ids = []
            for start in range(0, 200, 20):
                ids += await asyncio.gather(*(assess(i) for i in range(start, start + 20)))
                if start == 100:
                    assert stopped.is_set()
                    assert metric((await client.get("/metrics")).text, "normgate_audit_spool_depth") > 0
                    # While it is down the query API says so instead of hanging or failing with a trace.
                    down = await client.get("/audit")
                    assert down.status_code == 503 and down.json()["error"] == "not_ready"
            assert app.state.audit.flush(10)
            assert app.state.audit.spool.depth > 0
            await asyncio.to_thread(postgres_server.start)
            deadline = time.monotonic() + 60
            while app.state.audit.spool.depth and time.monotonic() < deadline:
                await asyncio.sleep(0.1)
            assert metric((await client.get("/metrics")).text, "normgate_audit_spool_depth") == 0
            return ids

    try:
        ids = asyncio.run(scenario())
    finally:
        if not _accepting(postgres_server):  # the session's other tests need it back
            postgres_server.start()
    store = Store(postgres_url)
    try:
        assert queries.count_records(store.engine) == 200
        stored, _ = queries.query_records(store.engine, queries.AuditFilter(), 1000)
        assert sorted(r["assessment_id"] for r in stored) == sorted(ids)
    finally:
        store.dispose()


def _accepting(server) -> bool:
    import psycopg

    try:
        psycopg.connect(f"host=127.0.0.1 port={server.port} user=postgres dbname=postgres", connect_timeout=2).close()
        return True
    except psycopg.OperationalError:
        return False


def test_audit_needs_the_audit_scope_and_records_key_ids(models_dir, tmp_path):
    url = f"sqlite:///{tmp_path / 'normgate.sqlite3'}"
    keys = ["pacs:pacs-secret-1:assess", "qa:qa-secret-1:audit", "all:all-secret-1:assess+evaluate+audit"]
    app = create_app(settings_for(models_dir, database_url=url, api_keys=keys))
    pacs, qa, every = ({"authorization": f"Bearer {k}"} for k in ("pacs-secret-1", "qa-secret-1", "all-secret-1"))

    async def scenario():
        async with running_app(app) as client:
            answer = await client.post("/assess", content=png_bytes(radiograph(64, 64)), headers={**PNG, **pacs})
            assert answer.status_code == 200
            assessment = answer.json()["assessment_id"]
            assert (await client.get("/audit")).status_code == 401
            refused = await client.get("/audit", headers=pacs)
            assert refused.status_code == 403 and refused.json()["error"] == "forbidden"
            assert (await client.get(f"/audit/{assessment}", headers=pacs)).status_code == 403
            records = (await client.get("/audit", headers=qa)).json()["records"]
            assert [(r["assessment_id"], r["key_id"]) for r in records] == [(assessment, "pacs")]
            # A verdict is given by whoever may assess; the audit scope alone does not allow it.
            verdict = {"verdict": "agree"}
            assert (
                await client.post(f"/assessments/{assessment}/verdict", json=verdict, headers=qa)
            ).status_code == 403
            given = await client.post(f"/assessments/{assessment}/verdict", json=verdict, headers=every)
            assert given.status_code == 201 and given.json()["verdict"]["key_id"] == "all"
            exported = await client.get("/audit", headers={**qa, "accept": "text/csv"})
            row = next(csv.DictReader(io.StringIO(exported.text)))
            assert (row["key_id"], row["verdict_key_id"]) == ("pacs", "all")

    asyncio.run(scenario())
