"""The .sql files and the dashboard's page ship inside the wheel and load from the installed
package."""

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_wheel_carries_sql_and_loads_it_without_the_source_tree(tmp_path):
    build = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--wheel-dir", str(tmp_path), str(ROOT)],
        capture_output=True, text=True)
    assert build.returncode == 0, build.stderr[-2000:]
    [wheel] = tmp_path.glob("rtsql-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    sql_files = sorted(p.relative_to(ROOT).as_posix() for p in
                       list((ROOT / "sql").rglob("*.sql")) + list((ROOT / "migrations").glob("*.sql")))
    for rel in sql_files:
        inside = "rtsql/" + rel
        assert inside in names, f"{rel} is missing from the wheel"
    for asset in (ROOT / "rtsql" / "ui").iterdir():
        assert f"rtsql/ui/{asset.name}" in names, f"the dashboard's {asset.name} is not in it"

    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)
    script = (
        "import rtsql, rtsql.resources as r, rtsql.db as db\n"
        f"assert rtsql.__file__.startswith({str(site)!r}), rtsql.__file__\n"
        "con = db.connect_memory()\n"
        "from rtsql import dashboard\n"
        "assert all(dashboard.asset(name) for name in dashboard.ASSETS)\n"
        "print(len(r.migrations()), len(r.sql_objects('views')) + len(r.sql_objects('macros')))\n"
    )
    run = subprocess.run([sys.executable, "-c", f"import sys; sys.path.insert(0, {str(site)!r})\n"
                          + script], capture_output=True, text=True, cwd=tmp_path)
    assert run.returncode == 0, run.stderr[-2000:]
    migrations, definitions = map(int, run.stdout.split())
    assert migrations == len(list((ROOT / "migrations").glob("*.sql")))
    assert definitions == len(list((ROOT / "sql").rglob("*.sql")))
