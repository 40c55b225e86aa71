"""Result instances are served from the store, so any replica answers WADO-RS: two apps on one database (SQLite
and a real PostgreSQL), STOW-RS on one, retrieval from the other, which holds nothing in memory."""

from __future__ import annotations

import asyncio
import io

import pydicom
from pydicom.uid import generate_uid

from service.app import create_app
from service.dicomweb.multipart import build_multipart_related, parse_multipart_related, stow_boundary
from tests.helpers import running_app, settings_for
from tests.service.dicom_factory import chest_like, dx_instance


def test_a_result_stored_by_one_replica_is_retrieved_from_another(models_dir, store_url):
    first = create_app(settings_for(models_dir, database_url=store_url))
    second = create_app(settings_for(models_dir, database_url=store_url, dicomweb_result_cache_mb=0))
    alone = create_app(settings_for(models_dir, dicomweb_result_retention_hours=0))  # its own store, not used
    study = generate_uid()
    body, content_type = build_multipart_related([dx_instance(chest_like(80, 72, seed=2), study_uid=study)], "bnd")

    async def scenario():
        async with running_app(first) as a, running_app(second) as b, running_app(alone) as c:
            stored = await a.post(
                f"/dicomweb/studies/{study}",
                content=body,
                headers={"content-type": content_type, "accept": "application/json"},
            )
            assert stored.status_code == 200, stored.text
            result = stored.json()["results"][0]
            await first.state.stow.results.drain()  # the save to the store runs behind the answer
            for role in ("secondary_capture", "structured_report"):
                url = result[role]["retrieve_url"].replace("http://normgate", "")
                local, remote = await a.get(url), await b.get(url)
                assert local.status_code == remote.status_code == 200, remote.text
                parts = [
                    parse_multipart_related(r.content, stow_boundary(r.headers["content-type"]), 1)[0].body
                    for r in (local, remote)
                ]
                assert parts[0] == parts[1]
                ds = pydicom.dcmread(io.BytesIO(parts[1]))
                assert ds.SOPInstanceUID == result[role]["sop_instance_uid"] and ds.StudyInstanceUID == study
                missing = await c.get(url)  # a replica on another store does not have it
                assert missing.status_code == 404 and missing.json()["error"] == "not_found"

    asyncio.run(scenario())
