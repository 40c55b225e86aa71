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


def test_readme_example_is_what_the_shipped_model_answers():
    """The README quotes /assess answers of the shipped default checkpoint; rerun
    ``python -m tests.readme_example --write`` when the checkpoint or the generator changes."""
    from tests.readme_example import example_answers, quoted_numbers

    quoted = quoted_numbers(README.read_text(encoding="utf-8"))
    first, second = example_answers()
    for label, example in (("first", first), ("second", second)):
        answer, claim = example["answer"], quoted[label]
        # Same input, same output; the tolerance only absorbs CPU kernels' last float bits across machines.
        assert abs(answer["probability"] - claim["probability"]) < 1e-4, label
        assert answer["decision"] == claim["decision"], label
        assert (
            abs(answer["point"]["x"] - claim["point"]["x"]) <= 1
            and abs(answer["point"]["y"] - claim["point"]["y"]) <= 1
        )
    assert quoted["first"]["image"] == first["answer"]["image"]
    assert quoted["first"]["model"] == first["answer"]["model"]


def test_readme_table_defaults_are_the_settings_defaults():
    """A default quoted as a literal (`64`, `auto`) is the value service/config.py really uses."""
    import re

    checked = 0
    for line in README.read_text(encoding="utf-8").splitlines():
        if not line.startswith("| `NORMGATE_"):
            continue
        cells = [c.strip() for c in line.strip("|").split("|")]
        name, default_cell = cells[0].strip("`"), cells[1]
        literal = re.fullmatch(r"`([^`]*)`", default_cell)
        if literal is None:  # described in words ("unset", "see …"): nothing literal to compare
            continue
        default = Settings.model_fields[name.removeprefix("NORMGATE_").lower()].get_default(call_default_factory=True)
        text = literal.group(1)
        if isinstance(default, bool):
            assert text.lower() == str(default).lower(), name
        elif isinstance(default, int | float):
            assert float(text.replace("_", "")) == float(default), name
        else:
            assert text == str(default), name
        checked += 1
    assert checked >= 15
