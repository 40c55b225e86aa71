"""Dependencies run one way (README, "Architecture"): checked on every import statement of the code.

``models`` is a plain ML library; inside ``service`` only ``api`` (and ``app``, which assembles it) may know the
web framework, and the layers below it never import the layers above.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from tests.helpers import REPO

WEB_FRAMEWORK = ("fastapi", "starlette", "uvicorn")

# package → module prefixes it must not import
FORBIDDEN: dict[str, tuple[str, ...]] = {
    "models": ("service", *WEB_FRAMEWORK, "prometheus_client"),
    "service.observability": (
        "service.api",
        "service.serving",
        "service.ingest",
        "service.dicomweb",
        "service.evaluation",
        *WEB_FRAMEWORK,
    ),
    "service.ingest": ("service.api", "service.serving", "service.dicomweb", "service.evaluation", *WEB_FRAMEWORK),
    "service.serving": ("service.api", "service.dicomweb", "service.evaluation", "service.db", *WEB_FRAMEWORK),
    "service.db": ("service.api", "service.dicomweb", "service.evaluation", *WEB_FRAMEWORK),
    "service.dicomweb": ("service.api", "service.evaluation", *WEB_FRAMEWORK),
    "service.evaluation": ("service.api", "service.serving", "service.dicomweb", *WEB_FRAMEWORK),
    "service.errors": ("service.api", *WEB_FRAMEWORK),
    "service.schemas": ("service.api", "service.serving", *WEB_FRAMEWORK),
    "service.config": ("service.api", "service.serving", *WEB_FRAMEWORK),
}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _imports(path: Path) -> list[tuple[int, str]]:
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append((node.lineno, node.module))
    return found


def _package_of(module: str) -> str | None:
    matches = [p for p in FORBIDDEN if module == p or module.startswith(p + ".")]
    return max(matches, key=len) if matches else None


SOURCES = sorted(p for root in ("models", "service") for p in (REPO / root).rglob("*.py"))


@pytest.mark.parametrize("path", SOURCES, ids=[str(p.relative_to(REPO)) for p in SOURCES])
def test_imports_follow_the_dependency_direction(path: Path):
    module = _module_name(path)
    package = _package_of(module)
    if package is None:
        return
    bad = [
        f"{path.relative_to(REPO)}:{line} imports {name}"
        for line, name in _imports(path)
        if any(name == f or name.startswith(f + ".") for f in FORBIDDEN[package])
    ]
    assert not bad, f"{package} must not import {FORBIDDEN[package]}: " + "; ".join(bad)


def test_every_service_subpackage_says_what_it_owns():
    for init in sorted((REPO / "service").glob("*/__init__.py")):
        doc = ast.get_docstring(ast.parse(init.read_text(encoding="utf-8")))
        assert doc and "import" in doc.lower(), f"{init.relative_to(REPO)} needs a docstring saying what it may import"
