"""service.serving.routing: which model's ``serves`` block takes a DICOM instance (docs/integration.md, "Routing")."""

from __future__ import annotations

import pytest

from models.metadata import ModelMetadata, Serves
from service.serving.routing import InstanceAttributes, match_strength, route


def _meta(name: str, serves: dict | None) -> ModelMetadata:
    return ModelMetadata(
        name=name, version="1", arch="resnet18", input_size=[64, 64], serves=Serves(**serves) if serves else None
    )


SHIPPED_CHEST = {"modality": "CR|DX|DR", "body_part_examined": "CHEST"}


@pytest.mark.parametrize(
    ("attributes", "expected"),
    [
        (InstanceAttributes("CR", "CHEST"), 2),
        (InstanceAttributes("dx", "chest"), 2),  # case-insensitive
        (InstanceAttributes("DR", None), 1),  # no Body Part Examined: not held against the model
        (InstanceAttributes("DX", "HAND"), None),  # a body part that is present and different rules it out
        (InstanceAttributes("CT", "CHEST"), None),
        (InstanceAttributes("CRX", "CHEST"), None),  # fullmatch, not search
        (InstanceAttributes(None, "CHEST"), None),  # no Modality: routed nowhere
        (InstanceAttributes("DX", "CHEST", "anything", "PA"), 2),  # attributes the block does not name: ignored
    ],
)
def test_match_strength_of_the_shipped_chest_block(attributes, expected):
    assert match_strength(Serves(**SHIPPED_CHEST), attributes) == expected


def test_the_most_specific_model_wins_then_the_name_order():
    models = {
        "b-dx-any": _meta("b", {"modality": "DX"}),
        "c-chest": _meta("c", SHIPPED_CHEST),
        "a-chest-pa": _meta("a", {**SHIPPED_CHEST, "view_position": "PA|AP"}),
        "mr-4ch": _meta("m", {"modality": "MR", "series_description": ".*4 ?(ch|chamber).*"}),
        "plain": _meta("p", None),
    }
    assert route(models, InstanceAttributes("DX", "CHEST", None, "PA")) == "a-chest-pa"  # 3 attributes
    assert route(models, InstanceAttributes("DX", "CHEST", None, "LL")) == "c-chest"  # a-… ruled out by LL
    assert route(models, InstanceAttributes("DX", "CHEST")) == "a-chest-pa"  # 2 each: name order
    assert route(models, InstanceAttributes("DX", None)) == "a-chest-pa"  # 1 each: name order
    assert route(models, InstanceAttributes("DX", "KNEE")) == "b-dx-any"
    assert route(models, InstanceAttributes("MR", None, "cine 4CH retro")) == "mr-4ch"
    assert route(models, InstanceAttributes("MR", None, "SAX stack")) is None
    assert route(models, InstanceAttributes("CT", "CHEST")) is None
    assert route({"plain": _meta("p", None)}, InstanceAttributes("CR", "CHEST")) is None  # no serves: never


def test_workers_without_metadata_are_skipped():
    assert route({"x": None, "y": _meta("y", SHIPPED_CHEST)}, InstanceAttributes("CR")) == "y"
