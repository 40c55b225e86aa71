"""References that resolve: the repository's docs are its reference, and every pointer to them must work.

Checked over the committed text files (``git ls-files``; without git, the files of the checkout):

* no citation of the external contract the project started from — its sections are docs/api.md,
  docs/formats.md and docs/algorithms.md now;
* every Markdown link of docs/ and README.md points at a file or folder of the repository, and a ``#anchor`` into
  a Markdown file names one of its headings (GitHub's heading ids); a repository path written as code there
  (``service/app.py``, ``tests/x.py::test_y``) exists too;
* every mention of ``docs/<name>.md`` names an existing file, and every ``docs/<name>.md, "Section"`` (or
  ``README, "Section"``) names a heading of that file;
* no absolute path of a developer's machine (``/work/``, ``/root/``, ``/home/``, pytest's ``/tmp/pytest-…``).
"""

from __future__ import annotations

import functools
import re
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
THIS_FILE = Path(__file__).resolve()

# Never text: skipped without reading (the weights alone are 22 MB).
BINARY_SUFFIXES = {".safetensors", ".png", ".jpg", ".jpeg", ".dcm", ".gz", ".zip", ".pth", ".pt", ".sqlite3"}
# Folders that are never committed; used only when git is not available.
UNCOMMITTED_DIRS = {".git", ".venv", "data", "runs", "artifacts", "__pycache__", ".pytest_cache", ".ruff_cache"}

# The contract's name as a whole word (a longer word that starts with it, such as an imaging modality, is not
# it). Written in pieces so that this file does not match itself when someone greps the tree.
CONTRACT_CITATION = re.compile(r"\b" + "SP" + r"EC\b")
# A path that goes on into one of those folders (a bare "/home/" is a pattern someone searches for, not a path).
MACHINE_PATH = re.compile(r"(?<![\w.])/(?:work|root|home)/[\w.-]|/tmp/pytest-")
DOC_MENTION = re.compile(r"\bdocs/([\w.-]+\.md)\b")
SECTION_REFERENCE = re.compile(r"\b(docs/[\w.-]+\.md|README(?:\.md)?),? \"([^\"\n]+)\"")
# A code span that is a whole repository path (placeholders such as <name> and globs do not match).
CODE_PATH = re.compile(r"`((?:\.ci|benchmarks|deploy|docs|load_tests|models|service|tests)/[\w./-]*)(?:::[\w\[\]-]+)?`")
MARKDOWN_LINK = re.compile(r"!?\[[^\]\n]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
FENCE = re.compile(r"^\s*(```|~~~)")
HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$")


def _walk(folder: Path) -> list[Path]:
    files = []
    for path in folder.iterdir():
        if path.is_dir():
            if path.name not in UNCOMMITTED_DIRS:
                files.extend(_walk(path))
        elif path.is_file():
            files.append(path)
    return files


@functools.cache
def committed_files() -> tuple[Path, ...]:
    try:
        listed = subprocess.run(
            ["git", "ls-files", "-z"], cwd=REPO, capture_output=True, check=True, timeout=30
        ).stdout.decode("utf-8")
        files = [REPO / name for name in listed.split("\0") if name]
    except (OSError, subprocess.SubprocessError):
        files = _walk(REPO)
    return tuple(sorted(p for p in files if p.is_file()))


@functools.cache
def text_files() -> tuple[tuple[Path, str], ...]:
    """(path, text) of every committed file that is text, this file left out."""
    out = []
    for path in committed_files():
        if path.suffix.lower() in BINARY_SUFFIXES or path.resolve() == THIS_FILE:
            continue
        data = path.read_bytes()
        if b"\0" in data[:8192]:
            continue
        try:
            out.append((path, data.decode("utf-8")))
        except UnicodeDecodeError:
            continue
    return tuple(out)


def markdown_files() -> list[Path]:
    return [
        p for p in committed_files() if p.suffix == ".md" and (p.parent == REPO / "docs" or p == REPO / "README.md")
    ]


def without_code(markdown: str) -> str:
    """The Markdown with fenced blocks blanked and inline code removed (links there are examples, not links)."""
    lines, fenced = [], False
    for line in markdown.splitlines():
        if FENCE.match(line):
            fenced = not fenced
            lines.append("")
            continue
        lines.append("" if fenced else re.sub(r"`[^`\n]*`", "", line))
    return "\n".join(lines)


def headings(markdown: str) -> list[str]:
    """Heading texts outside fenced code blocks, in order."""
    found, fenced = [], False
    for line in markdown.splitlines():
        if FENCE.match(line):
            fenced = not fenced
        elif not fenced and (m := HEADING.match(line)):
            found.append(m.group(2))
    return found


def plain_heading(heading: str) -> str:
    """A heading as it reads: code spans and links reduced to their text, emphasis markers dropped."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading)
    return re.sub(r"[`*]", "", text).strip()


def github_anchor(heading: str) -> str:
    """GitHub's id for a heading: lower case, punctuation dropped (letters, digits, '_', '-' kept), spaces → '-'."""
    return re.sub(r"[^\w\- ]", "", plain_heading(heading).lower()).replace(" ", "-")


@functools.cache
def anchors_of(path: Path) -> frozenset[str]:
    seen: dict[str, int] = {}
    anchors = set()
    for heading in headings(path.read_text(encoding="utf-8")):
        base = github_anchor(heading)
        count = seen.get(base, 0)
        anchors.add(base if count == 0 else f"{base}-{count}")
        seen[base] = count + 1
    return frozenset(anchors)


def section_titles(path: Path) -> list[str]:
    """Heading texts in lower case, without a leading section number such as "2." ."""
    titles = []
    for heading in headings(path.read_text(encoding="utf-8")):
        titles.append(re.sub(r"^\d+(\.\d+)*\.?\s+", "", plain_heading(heading)).lower())
    return titles


def line_of(text: str, offset: int) -> int:
    return text.count("\n", 0, offset) + 1


def relative(path: Path) -> str:
    return path.relative_to(REPO).as_posix()


def test_the_scan_sees_the_repository():
    names = {relative(p) for p, _ in text_files()}
    assert {"README.md", "docs/api.md", "docs/formats.md", "docs/algorithms.md", "service/app.py"} <= names
    assert "models/checkpoints/default/model.safetensors" not in names


def test_no_citation_of_the_external_contract():
    found = [
        f"{relative(path)}:{line_of(text, m.start())}"
        for path, text in text_files()
        for m in CONTRACT_CITATION.finditer(text)
    ]
    assert not found, "cite the repository's docs (docs/api.md, docs/formats.md, docs/algorithms.md) instead: " + (
        ", ".join(found)
    )


def test_markdown_links_resolve():
    broken = []
    for doc in markdown_files():
        text = without_code(doc.read_text(encoding="utf-8"))
        for m in MARKDOWN_LINK.finditer(text):
            target = m.group(1)
            if re.match(r"^[a-z][a-z0-9+.-]*:", target, re.IGNORECASE):  # http:, https:, mailto:
                continue
            where = f"{relative(doc)}:{line_of(text, m.start())} → {target}"
            path_part, _, anchor = target.partition("#")
            resolved = (doc.parent / path_part).resolve() if path_part else doc
            if not resolved.is_relative_to(REPO) or not resolved.exists():
                broken.append(f"{where} (no such file)")
            elif anchor and resolved.suffix == ".md" and anchor not in anchors_of(resolved):
                broken.append(f"{where} (no heading with that id)")
        full_text = doc.read_text(encoding="utf-8")
        for m in CODE_PATH.finditer(full_text):
            if not (REPO / m.group(1)).exists():
                broken.append(f"{relative(doc)}:{line_of(full_text, m.start())} → {m.group(1)} (no such file)")
    assert not broken, "broken links:\n" + "\n".join(broken)


def test_mentioned_docs_and_sections_exist():
    broken = []
    for path, text in text_files():
        for m in DOC_MENTION.finditer(text):
            if not (REPO / "docs" / m.group(1)).is_file():
                broken.append(f"{relative(path)}:{line_of(text, m.start())}: docs/{m.group(1)} does not exist")
        for m in SECTION_REFERENCE.finditer(text):
            name, section = m.group(1), m.group(2).strip().lower()
            target = REPO / ("README.md" if name.startswith("README") else name)
            if target.is_file() and not any(t.startswith(section) for t in section_titles(target)):
                broken.append(f'{relative(path)}:{line_of(text, m.start())}: no section "{m.group(2)}" in {name}')
    assert not broken, "\n".join(broken)


def test_no_absolute_paths_of_a_machine():
    found = [
        f"{relative(path)}:{line_of(text, m.start())}: {text[m.start() : m.start() + 40].splitlines()[0]}"
        for path, text in text_files()
        for m in MACHINE_PATH.finditer(text)
    ]
    assert not found, "use paths relative to the repository (or generic ones) instead:\n" + "\n".join(found)


def test_the_checks_catch_what_they_are_for():
    """The patterns and the anchor rule, on known inputs (a check that cannot fail checks nothing)."""
    assert CONTRACT_CITATION.search("as " + "SP" + "EC §3 says") and not CONTRACT_CITATION.search("SP" + "ECT imaging")
    assert MACHINE_PATH.search('out="/ho' + 'me/me/x"') and MACHINE_PATH.search("/tm" + "p/pytest-of-me/x")
    assert not MACHINE_PATH.search('service/serving/worker.py, https://example.org/home/x, ("/ho' + 'me/", "/tmp/")')
    assert github_anchor("GET /models and GET /methods") == "get-models-and-get-methods"
    assert github_anchor("`results.json`") == "resultsjson"
    assert github_anchor("Pointing Game (synthetic Object-CXR-like test set)") == (
        "pointing-game-synthetic-object-cxr-like-test-set"
    )
    assert headings("# A\n```\n# not a heading\n```\n## B") == ["A", "B"]
    assert [m.group(1) for m in MARKDOWN_LINK.finditer(without_code("[a](x.md) `[b](y.md)`"))] == ["x.md"]
    spans = "`service/app.py` `tests/a.py::test_b` `models/checkpoints/<name>/` `deploy/*.yml` `make test`"
    assert [m.group(1) for m in CODE_PATH.finditer(spans)] == ["service/app.py", "tests/a.py"]


def test_ingestion_limits_table_states_the_library_defaults():
    """docs/ingestion.md's limits table quotes models/imaging/limits.py's DecodeLimits, defined once."""
    import re

    from models.imaging.limits import DEFAULT_LIMITS, MIB

    rows = {}
    for line in (REPO / "docs" / "ingestion.md").read_text(encoding="utf-8").splitlines():
        match = re.match(r"\| `(max_\w+)` \| ([^|]+) \|", line)
        if match:
            rows[match.group(1)] = match.group(2).strip()

    def count(value: int) -> str:
        return f"{value:,}".replace(",", " ")

    assert rows == {
        "max_body_bytes": f"{DEFAULT_LIMITS.max_body_bytes // MIB} MiB",
        "max_pixels": count(DEFAULT_LIMITS.max_pixels),
        "max_dicom_element_bytes": f"{DEFAULT_LIMITS.max_dicom_element_bytes // MIB} MiB",
        "max_decode_bytes": f"{DEFAULT_LIMITS.max_decode_bytes // MIB} MiB",
        "max_png_chunks": count(DEFAULT_LIMITS.max_png_chunks),
        "max_png_ancillary_chunks": count(DEFAULT_LIMITS.max_png_ancillary_chunks),
        "max_png_ancillary_bytes": f"{DEFAULT_LIMITS.max_png_ancillary_bytes // MIB} MiB",
        "max_jpeg_scans": count(DEFAULT_LIMITS.max_jpeg_scans),
    }
