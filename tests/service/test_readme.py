"""The README's configuration table names every setting the service reads."""

from __future__ import annotations

from service.config import Settings
from tests.helpers import REPO

README = REPO / "README.md"


def test_every_setting_is_in_the_readme_table():
    table_rows = [line for line in README.read_text(encoding="utf-8").splitlines() if line.startswith("| `NORMGATE_")]
    documented = {line.split("`")[1] for line in table_rows}
    expected = {f"NORMGATE_{name.upper()}" for name in Settings.model_fields}
    assert expected - documented == set(), "settings missing from the README table"
    assert documented - expected == set(), "README documents settings that do not exist"


def test_readme_shows_the_two_commands():
    text = README.read_text(encoding="utf-8")
    assert "make run" in text and "make test" in text
