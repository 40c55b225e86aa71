"""The README's example, produced by the shipped default checkpoint itself.

    .venv/bin/python -m tests.readme_example --write    # rerun whenever models/checkpoints/default changes

It writes the synthetic test images the README's commands write (``python -m models.synth --n-test 2``, default
seed and size), sends the first to /assess exactly as ``make run`` serves it (default settings, shipped
checkpoints) and replaces the README's block between the ``readme-example`` markers with the real answer and the
annotated box. ``tests/test_readme.py`` recomputes the answer and fails when the README no longer says it.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import sys
import tempfile
from pathlib import Path
from typing import Any

from models.datasets import read_split
from models.synth import generate
from service.app import create_app
from service.config import Settings
from tests.helpers import REPO, running_app

README = REPO / "README.md"
START, END = "<!-- readme-example:start -->", "<!-- readme-example:end -->"


def example_answers() -> list[dict[str, Any]]:
    """For each README image: its annotated boxes and the /assess answer of the shipped default model."""
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "synth"
        # The README's command: python -m models.synth --out /tmp/synth --n-train 0 --n-dev 0 --n-test 2
        generate(root, 0, 0, 2, progress=False)
        samples = read_split(root, "test")

        async def assess_all() -> list[dict[str, Any]]:
            out = []
            async with running_app(create_app(Settings(state_dir=Path(tmp) / "state"))) as client:
                for sample in samples:
                    response = await client.post(
                        "/assess", content=sample.image_path.read_bytes(), headers={"content-type": "image/png"}
                    )
                    response.raise_for_status()
                    out.append({"boxes": sample.boxes, "answer": response.json()})
            return out

        return asyncio.run(assess_all())


def _box_text(boxes: list[tuple[float, float, float, float]]) -> str:
    if not boxes:
        return "no annotated object (a negative image)"
    x1, y1, x2, y2 = boxes[0]
    more = f" (and {len(boxes) - 1} more)" if len(boxes) > 1 else ""
    return f"an annotated object with bounding box x {x1:g}–{x2:g}, y {y1:g}–{y2:g}{more}"


def _inside(point: dict[str, int] | None, boxes: list[tuple[float, float, float, float]]) -> bool:
    return point is not None and any(x1 <= point["x"] <= x2 and y1 <= point["y"] <= y2 for x1, y1, x2, y2 in boxes)


def render_block(examples: list[dict[str, Any]]) -> str:
    first, second = examples
    answer = dict(first["answer"])
    shown = {**answer, "heatmap": {**answer["heatmap"], "png_base64": answer["heatmap"]["png_base64"][:24] + "…"}}
    point = answer["point"]
    if first["boxes"]:
        where = "lies inside it" if _inside(point, first["boxes"]) else "lies outside it"
    elif answer["decision"] == "reacquire":
        # A negative answered reacquire is a false alarm; say so rather than let the example read as a detection.
        where = (
            "marks where the model's evidence peaked: a false alarm, since the calibrated threshold is set for "
            "sensitivity 0.95 and gives up specificity for it (docs/model-card.md)"
        )
    else:
        where = f"marks where the model's evidence peaked; the decision is `{answer['decision']}`"
    second_answer = second["answer"]
    lines = [
        START,
        "A real answer from `make run` with the shipped default checkpoint "
        f"({answer['model']['arch']} {answer['model']['version']}; see `docs/model-card.md`), "
        "`png_base64` shortened here. "
        f"The first synthetic image has {_box_text(first['boxes'])}; the returned `point` "
        f"({point['x']}, {point['y']}) {where}.",
        "",
        "```json",
        json.dumps(shown, indent=2, ensure_ascii=False),
        "```",
        "",
        f"The second synthetic image ({_box_text(second['boxes'])}) is answered "
        f'`"probability": {second_answer["probability"]:.4f}`, `"decision": "{second_answer["decision"]}"`, '
        f'`"point": {{"x": {second_answer["point"]["x"]}, "y": {second_answer["point"]["y"]}}}`.',
        END,
    ]
    return "\n".join(lines)


def quoted_numbers(text: str) -> dict[str, Any]:
    """What the README's block claims: both probabilities, decisions and points, and the first image's size."""
    block = text[text.index(START) : text.index(END)]
    payload = json.loads(
        block[block.index("```json") + len("```json") : block.index("```", block.index("```json") + 7)]
    )
    second = re.search(
        r'"probability": ([0-9.]+)`, `"decision": "(\w+)"`, `"point": \{"x": (\d+), "y": (\d+)\}`', block
    )
    if second is None:
        raise ValueError("the README example block does not quote the second image's answer")
    return {
        "first": {
            "probability": payload["probability"],
            "decision": payload["decision"],
            "point": payload["point"],
            "image": payload["image"],
            "model": payload["model"],
        },
        "second": {
            "probability": float(second.group(1)),
            "decision": second.group(2),
            "point": {"x": int(second.group(3)), "y": int(second.group(4))},
        },
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.readme_example", description=__doc__)
    parser.add_argument("--write", action="store_true", help="rewrite README.md's example block")
    args = parser.parse_args(argv)
    block = render_block(example_answers())
    if not args.write:
        print(block)
        return 0
    text = README.read_text(encoding="utf-8")
    if START not in text or END not in text:
        print(f"{README}: no {START} … {END} block to replace", file=sys.stderr)
        return 2
    README.write_text(text[: text.index(START)] + block + text[text.index(END) + len(END) :], encoding="utf-8")
    print(f"rewrote the example block of {README}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
