"""Guards of the design that no single feature test holds: the production code writes SQL by hand only at the
listed places (STYLE.md, "Speed without a second data layer"); everything else goes through the ORM."""

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PRODUCTION = ("generation", "workers_app", "t2i_project")

# (module, the start of its SQL): the only hand-written statements, each for a reason the ORM cannot serve.
ALLOWED_SQL = {
    # Wake-ups across processes: PostgreSQL's NOTIFY (sent in the transaction that queues work) and LISTEN.
    ("generation/dispatch.py", "SELECT pg_notify("),
    ("generation/dispatch.py", "LISTEN"),
    # The admin's task count on a large table: the planner's estimate instead of COUNT(*) over every row.
    ("generation/admin.py", "SELECT reltuples::bigint FROM pg_class"),
    # The offline sweep waits after a database restart: when did the server start.
    ("workers_app/services.py", "SELECT pg_postmaster_start_time()"),
    # The health check: can the database answer at all.
    ("generation/ops_views.py", "SELECT 1"),
}
RAW_CALLS = {"raw", "extra", "RawSQL"}


def _sql_text(node: ast.expr) -> str | None:
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value
    if isinstance(node, ast.JoinedStr):
        return "".join(part.value for part in node.values if isinstance(part, ast.Constant))
    return None


def hand_written_sql() -> set[tuple[str, str]]:
    """Every `.execute(<SQL text>)`, `.raw(…)`, `.extra(…)` and `RawSQL(…)` in production modules."""
    sites = set()
    for folder in PRODUCTION:
        for path in (ROOT / folder).rglob("*.py"):
            if "migrations" in path.parts:
                continue
            name = path.relative_to(ROOT).as_posix()
            for node in ast.walk(ast.parse(path.read_text(), filename=name)):
                if not isinstance(node, ast.Call):
                    continue
                called = (
                    node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", "")
                )
                if called in RAW_CALLS:
                    sites.add((name, f"{called}(…) at line {node.lineno}"))
                elif called in ("execute", "executemany") and node.args:
                    text = _sql_text(node.args[0])
                    if text is None:
                        sites.add((name, f"SQL built at run time, line {node.lineno}"))
                    else:
                        sites.add((name, " ".join(text.split())))
    return sites


def test_hand_written_sql_is_only_at_the_listed_places():
    found = hand_written_sql()
    unexpected = {
        (module, sql)
        for module, sql in found
        if not any(module == m and sql.startswith(s) for m, s in ALLOWED_SQL)
    }
    missing = {
        (m, s) for m, s in ALLOWED_SQL if not any(module == m and sql.startswith(s) for module, sql in found)
    }
    assert not unexpected, (
        f"hand-written SQL outside the list (use the ORM, or add it with its reason): {unexpected}"
    )
    assert not missing, f"listed but gone (take it off the list): {missing}"
