"""The checked-in schema (``src/quota_authority/store/schema.sql``) is what the migrations
make: a fresh embedded PostgreSQL of the test's own, migrated to head, read back by
``scripts/schema.py`` (``make schema``), is the file byte for byte. And each migration is a
frozen snapshot: it imports no code of the service and splices no other's SQL.

The test always migrates its own embedded PostgreSQL, as ``make schema`` does, under
``make test-citus`` too: the file is the schema of one plain PostgreSQL, the one pgserver
ships, whichever server the rest of the suite runs on.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
VERSIONS = ROOT / "src/quota_authority/store/migrations/versions"
sys.path.insert(0, str(ROOT / "scripts"))

import schema  # noqa: E402


@pytest.fixture(scope="module")
def migrated() -> str:
    return schema.render()


def test_the_schema_file_is_what_the_migrations_make(migrated: str) -> None:
    diff = schema.stale(migrated, schema.SCHEMA)
    assert diff is None, (
        f"{schema.SCHEMA.relative_to(ROOT)} is not the schema the migrations make; run "
        f"`{schema.REGENERATE}` and commit it (- the file, + the migrations):\n{diff}"
    )


def test_a_changed_function_or_table_makes_the_file_stale(migrated: str, tmp_path: Path) -> None:
    stale = tmp_path / "schema.sql"
    stale.write_text(migrated.replace("RETURN stored_count;", "RETURN 0;", 1), encoding="utf-8")
    diff = schema.stale(migrated, stale)
    assert diff is not None and "-    RETURN 0;" in diff and "+    RETURN stored_count;" in diff
    stale.write_text(migrated.replace("    item_index integer,\n", ""), encoding="utf-8")
    assert schema.stale(migrated, stale) is not None
    assert schema.stale(migrated, tmp_path / "missing.sql") is not None


def test_the_file_holds_every_table_and_function_whole(migrated: str) -> None:
    for table in (
        "sellers",
        "seller_weeks",
        "pairs",
        "pair_weeks",
        "daily_gmv",
        "request_responses",
        "audit_log",
        "holds",
    ):
        assert f"\nCREATE TABLE {table} (\n" in migrated, table
    functions = (
        "lock_outreach_state",
        "write_outreach",
        "lock_seller_outreach",
        "write_seller_outreach",
        "write_seller_batch",
        "lock_request_ids",
        "claim_request_ids",
        "claim_seller_request_ids",
        "lock_shard_outreach",
        "write_shard_outreach",
        "shard_outreach_check",
        "confirm_holds",
    )
    for function in functions:
        assert f"\nCREATE OR REPLACE FUNCTION public.{function}(" in migrated, function
    assert migrated.count("$function$;\n") == len(functions)


def test_the_dates_migration_0008_takes_from_the_clock_are_written_alike_on_any_day() -> None:
    def migrated_on(cutover: str, week_after: str) -> str:
        return (
            f"ALTER TABLE t ATTACH PARTITION t_legacy FOR VALUES FROM (MINVALUE) "
            f"TO ('{cutover} 00:00:00+00');\n"
            f"ALTER TABLE t ATTACH PARTITION t_p{week_after.replace('-', '')} "
            f"FOR VALUES FROM ('{week_after} 00:00:00+00') TO ('<later>');\n"
        )

    one = schema._relative_dates(migrated_on("2026-12-21", "2026-12-28"))
    other = schema._relative_dates(migrated_on("2027-03-01", "2027-03-08"))
    assert one == other
    assert "t_p<cutover+1w> FOR VALUES FROM ('<cutover+1w>')" in one


@pytest.mark.parametrize("revision", sorted(p.name for p in VERSIONS.glob("*.py")))
def test_a_migration_imports_no_live_code_and_splices_no_sql(revision: str) -> None:
    """A revision that imported the service's modules, or loaded another revision's SQL
    and edited it, would change what it does when they change."""
    tree = ast.parse((VERSIONS / revision).read_text(encoding="utf-8"))
    imported = {
        name.split(".")[0]
        for node in ast.walk(tree)
        for name in (
            [a.name for a in node.names]
            if isinstance(node, ast.Import)
            else [node.module or "."]
            if isinstance(node, ast.ImportFrom)
            else []
        )
    }
    allowed = {"alembic", "sqlalchemy"} | (set(sys.stdlib_module_names) - {"importlib"})
    assert imported <= allowed, f"{revision} imports {sorted(imported - allowed)}"
    replaced = [
        node.lineno
        for node in ast.walk(tree)
        if isinstance(node, ast.Call)
        and isinstance(node.func, ast.Attribute)
        and node.func.attr == "replace"
    ]
    assert not replaced, f"{revision} edits SQL with str.replace on lines {replaced}"
