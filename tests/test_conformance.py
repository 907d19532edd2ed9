"""The conformance table (docs/conformance.md) is parsed and held to its promise.

Every row of the table names a behaviour Google documents; its last cell must either name the
tests that prove our behaviour (`tests/file.py::test_name`) or say why there is none
(`diverges:`, `not built:` or `untested:` followed by a reason). Every test it names must exist.
This module only reads files: it runs none of the tests it checks.
"""

import ast
import re
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TABLE = ROOT / "docs" / "conformance.md"
README = ROOT / "README.md"

TEST_REF = re.compile(r"(tests/[\w/]+\.py)::(test_\w+)(?:\[[^\]]*\])?")
REASON = re.compile(r"\b(diverges|not built|untested):\s*\S.{9,}", re.IGNORECASE)
COLUMNS = ("id", "google documents", "we do", "proof")


@dataclass(frozen=True)
class Row:
    """One row of a conformance table: its id and its cells, as written."""

    line: int
    cells: tuple[str, ...]

    @property
    def ident(self) -> str:
        return self.cells[0].strip()

    @property
    def proof(self) -> str:
        return self.cells[-1]


def split_cells(line: str) -> tuple[str, ...]:
    """The cells of a Markdown table line (`\\|` is a literal bar, not a separator)."""
    inner = line.strip().removeprefix("|").removesuffix("|")
    return tuple(cell.replace("\\|", "|").strip() for cell in re.split(r"(?<!\\)\|", inner))


def table_rows(text: str) -> list[Row]:
    """Every body row of every table whose header is exactly COLUMNS; other tables are skipped."""
    rows: list[Row] = []
    in_table = False
    lines = text.splitlines()
    for number, line in enumerate(lines, start=1):
        if not line.lstrip().startswith("|"):
            in_table = False
            continue
        cells = split_cells(line)
        if tuple(c.lower() for c in cells) == COLUMNS:
            in_table = True
            continue
        if in_table and not set("".join(cells)) <= set("-: "):
            rows.append(Row(number, cells))
    return rows


def defined_tests(path: Path) -> set[str]:
    """Names of the module-level test functions defined in `path`."""
    tree = ast.parse(path.read_text(), filename=str(path))
    return {
        node.name
        for node in tree.body
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
        and node.name.startswith("test_")
    }


def problems_of(rows: list[Row], root: Path) -> list[str]:
    """What is wrong with `rows`: a malformed or unproven row, a named test that does not exist."""
    problems: list[str] = []
    seen: set[str] = set()
    found: dict[Path, set[str]] = {}
    for row in rows:
        where = f"line {row.line} ({row.ident})"
        if len(row.cells) != len(COLUMNS):
            problems.append(f"{where}: {len(row.cells)} cells, not {len(COLUMNS)}")
            continue
        if row.ident in seen:
            problems.append(f"{where}: the id is used twice")
        seen.add(row.ident)
        if not all(row.cells[1:3]):
            problems.append(f"{where}: says neither what Google documents nor what we do")
        refs = TEST_REF.findall(row.proof)
        if not refs and not REASON.search(row.proof):
            problems.append(f"{where}: names no test and gives no diverges/not built reason")
        for file, name in refs:
            path = root / file
            if not path.is_file():
                problems.append(f"{where}: {file} does not exist")
                continue
            if path not in found:
                found[path] = defined_tests(path)
            if name not in found[path]:
                problems.append(f"{where}: {file} defines no {name}")
    return problems


def test_the_table_exists_and_has_rows() -> None:
    """docs/conformance.md holds conformance tables, and they have a fair number of rows."""
    rows = table_rows(TABLE.read_text())
    assert len(rows) >= 60, f"only {len(rows)} rows found: is the header still {COLUMNS}?"


def test_every_row_is_proven_or_says_why_not() -> None:
    """Each row names tests that exist, or states a divergence or what is not built."""
    assert problems_of(table_rows(TABLE.read_text()), ROOT) == []


def test_the_checker_catches_unproven_rows_and_missing_tests() -> None:
    """A row with no proof, a test that is not defined and a missing file are all reported."""
    text = "\n".join(
        [
            "| id | Google documents | we do | proof |",
            "|---|---|---|---|",
            "| A1 | a | b | `tests/test_conformance.py::test_readme_links_to_the_table` |",
            "| A2 | a | b | we think so |",
            "| A3 | a | b | `tests/test_conformance.py::test_no_such_thing[x]` |",
            "| A4 | a | b | `tests/nowhere.py::test_x` |",
            "| A5 | a | b | diverges: the field is read but its value is ignored |",
            "| A5 | a | b | not built: x |",
            "",
            "| other | table |",
            "|---|---|",
            "| A6 | ignored |",
        ]
    )
    rows = table_rows(text)
    assert [row.ident for row in rows] == ["A1", "A2", "A3", "A4", "A5", "A5"]
    assert problems_of(rows, ROOT) == [
        "line 4 (A2): names no test and gives no diverges/not built reason",
        "line 5 (A3): tests/test_conformance.py defines no test_no_such_thing",
        "line 6 (A4): tests/nowhere.py does not exist",
        "line 8 (A5): the id is used twice",
        "line 8 (A5): names no test and gives no diverges/not built reason",
    ]


def test_the_table_covers_what_the_issue_lists() -> None:
    """Each area Batch documents for the agent has a section of the table."""
    headings = {
        line.lstrip("#").strip().lower()
        for line in TABLE.read_text().splitlines()
        if line.startswith("## ")
    }
    wanted = [
        "runnables",
        "background",
        "barriers",
        "timeouts",
        "status events",
        "exit codes",
        "environment",
        "logs",
        "secrets",
        "volumes",
        "containers",
        "user",
        "preemption",
        "reboot",
    ]
    missing = [word for word in wanted if not any(word in heading for heading in headings)]
    assert missing == [], headings


def test_readme_links_to_the_table() -> None:
    """The README sends users to docs/conformance.md to decide whether their jobs can run."""
    assert "(docs/conformance.md)" in README.read_text()
