"""SECURITY.md names the tests behind its promises: every one of them exists, and every finding of issue 13
has a row in its item-by-item table with at least one test."""

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
TEXT = (ROOT / "SECURITY.md").read_text()


def defined_tests(path: str) -> set[str]:
    tree = ast.parse((ROOT / path).read_text())
    return {node.name for node in ast.walk(tree) if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)}


def references(text: str) -> list[tuple[str, str]]:
    """(file, test) for each `tests/x.py::test_a`, and each `::test_b` after it (the same file)."""
    found, current = [], None
    for match in re.finditer(r"`(tests/[\w/]+\.py)::(test_\w+)`|`::(test_\w+)`", text):
        if match.group(1):
            current = match.group(1)
            found.append((current, match.group(2)))
        elif current is not None:
            found.append((current, match.group(3)))
    return found


def test_every_test_named_in_security_md_exists():
    refs = references(TEXT)
    assert len(refs) > 100
    missing = [f"{path}::{name}" for path, name in refs if name not in defined_tests(path)]
    assert missing == []


def test_every_finding_of_issue_13_has_a_row_with_tests():
    table = TEXT.split("## Issue 13, item by item", 1)[1].split("\n## ", 1)[0]
    rows = {int(m.group(1)): m.group(0) for m in re.finditer(r"^\| (\d+) \|.*$", table, re.M)}
    assert sorted(rows) == list(range(1, 13))
    for number, row in rows.items():
        assert references(row), f"item {number} names no test"
