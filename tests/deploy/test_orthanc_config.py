"""deploy/orthanc: the Orthanc configuration and Lua script that docs/integration.md shows are the committed files
(the end-to-end tests run those files), and the Lua script forwards by the modalities the models serve."""

from __future__ import annotations

import json
import re

from tests.deploy.conftest import DEPLOY, REPO

ORTHANC = DEPLOY / "orthanc"
INTEGRATION = (REPO / "docs" / "integration.md").read_text()


def _block(language: str, after: str) -> str:
    start = INTEGRATION.index(after)
    match = re.compile(rf"```{language}\n(.*?)```", re.DOTALL).search(INTEGRATION, start)
    assert match, f"no {language} block after {after!r}"
    return match.group(1)


def test_docs_show_the_committed_files():
    assert _block("lua", "`forward-to-normgate.lua`") == (ORTHANC / "forward-to-normgate.lua").read_text()
    assert json.loads(_block("json", "`orthanc.json`")) == json.loads((ORTHANC / "orthanc.json").read_text())


def test_the_script_forwards_only_served_modalities_and_only_what_came_over_dicom():
    lua = (ORTHANC / "forward-to-normgate.lua").read_text()
    active = "\n".join(line for line in lua.splitlines() if not line.strip().startswith("--"))
    assert "modalities = {CR = true, DX = true, DR = true}, bodyParts = {CHEST = true}" in active
    assert "origin['RequestOrigin'] ~= 'DicomProtocol'" in active and "if served(BY_INSTANCE, tags) then" in active
    # The cardiac rule: MR series, forwarded whole when stable, its body parts those the cardiac model serves.
    assert "{modalities = {MR = true}, bodyParts = {HEART = true, CARDIAC = true, CHEST = true, THORAX = true}" in (
        active
    )
    assert "function OnStableSeries(seriesId, tags, metadata)" in active and "if served(BY_SERIES, tags) then" in active
    shipped = json.loads((REPO / "models" / "checkpoints" / "cmr-lvot" / "model.json").read_text())["serves"]
    assert shipped["modality"] == "MR" and set(shipped["body_part_examined"].split("|")) == {
        "HEART",
        "CARDIAC",
        "CHEST",
        "THORAX",
    }
    config = json.loads((ORTHANC / "orthanc.json").read_text())
    assert config["LuaScripts"][0].endswith("forward-to-normgate.lua")
    assert config["DicomWeb"]["Servers"]["normgate"][0].endswith("/dicomweb/")
    # A stable series goes in one request: no more instances than NormGate takes in one (its default), no body
    # larger than it takes (NORMGATE_DICOMWEB_MAX_INSTANCES, NORMGATE_MAX_BODY_MB).
    from service.config import Settings

    defaults = Settings(_env_file=None)
    assert config["DicomWeb"]["StowMaxInstances"] == defaults.dicomweb_max_instances
    assert 0 < config["DicomWeb"]["StowMaxSize"] < defaults.max_body_mb
    assert 0 < config["StableAge"] <= 30
