"""The migrations build exactly the schema the code declares, on SQLite and on PostgreSQL."""
from __future__ import annotations

from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext

from kkmtransfer.adapters.db import metadata
from kkmtransfer.adapters.migrate import current_revision, head_revision


def test_migrated_schema_matches_the_tables_in_code(engine, database_url):
    assert current_revision(engine) == head_revision(database_url)
    with engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn, opts={"compare_type": True}), metadata)
    assert diff == [], diff


def test_a_built_wheel_carries_the_migrations_and_celeryconfig(tmp_path):
    """`pip install .` (not editable) must be able to create the schema."""
    import shutil
    import subprocess
    import sys
    import zipfile
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    clean = tmp_path / "src"  # as a fresh clone has it: no build/ nor egg-info to borrow a file list from
    shutil.copytree(root, clean, ignore=shutil.ignore_patterns(".git", ".venv", "build", "*.egg-info", "var",
                                                               "__pycache__", ".pytest_cache", ".hypothesis"))
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w",
                    str(tmp_path), str(clean)], check=True, capture_output=True, timeout=300)
    [wheel] = tmp_path.glob("kkmtransfer-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    shipped = {n.rsplit("/", 1)[-1] for n in names if n.startswith("kkmtransfer/migrations/versions/")}
    in_tree = {p.name for p in (root / "kkmtransfer" / "migrations" / "versions").glob("*.py")}
    assert in_tree and in_tree <= shipped
    assert {"celeryconfig.py", "kkmtransfer/migrations/env.py", "kkmtransfer/migrations/script.py.mako"} <= names
