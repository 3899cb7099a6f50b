"""Every citation of the design document points at a section it has.

Code comments, docstrings, configs and the README cite the design as ``docs/design.md §3``, ``§1-2``
(a range) or ``§1.2`` (a subsection), possibly chained (``docs/design.md §1, §3``). These tests read
the section numbers off the document's headings (``## §1 ...``, ``### §1.2 ...``) and fail, naming
file and line, when a citation points at a section that has no heading, when a file names the design
file without its folder (a stale or private copy), or when two headings share a number.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DESIGN = ROOT / "docs" / "design.md"
SCANNED = ("README.md", "cli.py", "moram", "callbacks", "configs", "benchmarks", "recipes", "tests", "docs")
SKIPPED_DIRS = {".git", "__pycache__", ".mypy_cache", ".ruff_cache", ".pytest_cache"}
MAX_BYTES = 4 << 20  # larger files are data, not prose

NUMBER = r"\d+(?:\.\d+)*"
SECTION = rf"§\s*{NUMBER}(?:\s*[-–]\s*{NUMBER})?"
HEADING = re.compile(rf"^#{{1,6}}\s+§({NUMBER})(?=\s|$)")
CITATION = re.compile(rf"docs/design\.md\s*({SECTION}(?:\s*(?:,|and|&)\s*{SECTION})*)")
IN_DOC_REFERENCE = re.compile(SECTION)
SECTION_PART = re.compile(rf"§\s*({NUMBER})(?:\s*[-–]\s*({NUMBER}))?")
# The design file's name in capitals, not preceded by its folder; assembled here so this file never matches it.
BARE_NAME = re.compile("(?<!docs/)" + "DESIGN" + r"\.md")


def text_files(root: Path = ROOT, scanned: tuple[str, ...] = SCANNED) -> Iterator[tuple[Path, str]]:
    """``(path, text)`` of every text file under the scanned entries of ``root`` (binary and huge files skipped)."""
    for entry in scanned:
        top = root / entry
        paths = [top] if top.is_file() else sorted(top.rglob("*")) if top.is_dir() else []
        for path in paths:
            if not path.is_file() or SKIPPED_DIRS.intersection(path.relative_to(root).parts):
                continue
            if path.stat().st_size > MAX_BYTES:
                continue
            data = path.read_bytes()
            if b"\0" in data[:8192]:
                continue
            try:
                yield path, data.decode("utf-8")
            except UnicodeDecodeError:
                continue


def headings(design_text: str) -> list[str]:
    """Section numbers of the design document's headings, in order (``["1", "1.1", ...]``)."""
    found = []
    in_code = False
    for line in design_text.splitlines():
        if line.lstrip().startswith("```"):
            in_code = not in_code
            continue
        match = None if in_code else HEADING.match(line)
        if match:
            found.append(match.group(1))
    return found


def expand(first: str, last: str | None) -> list[str]:
    """The sections a citation names: one, or every one of a range whose ends differ in their last part only."""
    if last is None:
        return [first]
    head_a, _, tail_a = first.rpartition(".")
    head_b, _, tail_b = last.rpartition(".")
    if head_a == head_b and int(tail_a) <= int(tail_b):
        prefix = head_a + "." if head_a else ""
        return [f"{prefix}{n}" for n in range(int(tail_a), int(tail_b) + 1)]
    return [first, last]


def cited_sections(fragment: str) -> list[str]:
    """Every section number in a citation fragment such as ``§1, §3-4`` (ranges expanded)."""
    return [s for m in SECTION_PART.finditer(fragment) for s in expand(m.group(1), m.group(2))]


def citations(path: Path, text: str, design: Path = DESIGN) -> Iterator[tuple[int, str]]:
    """``(line number, section)`` of every design citation in ``text``.

    Everywhere: ``docs/design.md §N`` (chains and ranges included). In the design document itself, a
    bare ``§N`` outside its headings is a cross-reference and counts too.
    """
    own = path.resolve() == design.resolve()
    for number, line in enumerate(text.splitlines(), start=1):
        for match in CITATION.finditer(line):
            for section in cited_sections(match.group(1)):
                yield number, section
        if own and not HEADING.match(line):
            for match in IN_DOC_REFERENCE.finditer(line):
                for section in cited_sections(match.group(0)):
                    yield number, section


def dangling_citations(root: Path, design: Path) -> list[str]:
    """``file:line: §N`` for every citation whose section has no heading in ``design``."""
    known = set(headings(design.read_text(encoding="utf-8")))
    bad = []
    for path, text in text_files(root):
        for number, section in citations(path, text, design):
            if section not in known:
                bad.append(f"{path.relative_to(root)}:{number}: §{section}")
    return bad


def bare_design_names(root: Path) -> list[str]:
    """``file:line`` of every mention of the design file without its ``docs/`` folder."""
    return [
        f"{path.relative_to(root)}:{number}: {line.strip()[:100]}"
        for path, text in text_files(root)
        for number, line in enumerate(text.splitlines(), start=1)
        if BARE_NAME.search(line)
    ]


def test_design_document_exists_with_numbered_sections():
    sections = headings(DESIGN.read_text(encoding="utf-8"))
    assert {"1", "2", "3", "4"} <= set(sections), f"docs/design.md needs sections §1 to §4, has {sections}"


def test_every_cited_section_has_a_heading():
    bad = dangling_citations(ROOT, DESIGN)
    assert not bad, "citations of sections docs/design.md does not have:\n" + "\n".join(bad)


def test_no_citation_of_the_design_file_outside_docs():
    bad = bare_design_names(ROOT)
    assert not bad, "cite the design as docs/design.md §N:\n" + "\n".join(bad)


def test_section_numbers_are_unique():
    sections = headings(DESIGN.read_text(encoding="utf-8"))
    repeated = sorted({s for s in sections if sections.count(s) > 1})
    assert not repeated, f"docs/design.md has several headings numbered {repeated}"


# ---------------------------------------------------------------------- the checks themselves
CITE = "docs/design" + ".md"  # so that this file's examples are not citations of the real document


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "design.md").write_text(
        "# Design\n\n## §1 Method\n\n### §1.2 Routing\n\nSee §2 and §1.2.\n\n## §2 Evaluation\n\n"
        "```\n## §9 not a heading (code block)\n```\n",
        encoding="utf-8",
    )
    (tmp_path / "moram").mkdir()
    return tmp_path


def test_parser_finds_headings_chains_ranges_and_subsections(tree: Path):
    assert headings((tree / "docs" / "design.md").read_text(encoding="utf-8")) == ["1", "1.2", "2"]
    assert cited_sections("§1, §3-4") == ["1", "3", "4"]
    assert cited_sections("§1.2–1.4") == ["1.2", "1.3", "1.4"]
    (tree / "moram" / "a.py").write_text(
        f"# ok: {CITE} §1, §2 and {CITE} §1-2; {CITE} §1.2\n# bad: {CITE} §3, §1.3\nx = 1  # {CITE} §2-4\n",
        encoding="utf-8",
    )
    assert dangling_citations(tree, tree / "docs" / "design.md") == [
        "moram/a.py:2: §3", "moram/a.py:2: §1.3", "moram/a.py:3: §3", "moram/a.py:3: §4",
    ]


def test_parser_checks_the_documents_own_cross_references(tree: Path):
    design = tree / "docs" / "design.md"
    design.write_text(design.read_text(encoding="utf-8") + "\nAs §5 says.\n", encoding="utf-8")
    assert dangling_citations(tree, design) == ["docs/design.md:15: §5"]


def test_bare_names_are_found_and_binary_files_skipped(tree: Path):
    name = "DESIGN" + ".md"
    (tree / "moram" / "old.py").write_text(f"# see {name} §1\n# see {CITE} §1\n", encoding="utf-8")
    (tree / "moram" / "blob.bin").write_bytes(b"\0\1" + name.encode())
    assert bare_design_names(tree) == [f"moram/old.py:1: # see {name} §1"]
