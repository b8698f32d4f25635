"""Prints line and branch coverage per workspace package from the last pytest --cov run.

`make test` runs it after pytest; the floor (`fail_under` in pyproject.toml's
[tool.coverage.report]) is enforced by pytest-cov on the total.
"""

from __future__ import annotations

import json
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from coverage import Coverage
from coverage.exceptions import NoDataError

ROOT = Path(__file__).resolve().parent.parent


@dataclass
class Tally:
    statements: int = 0
    missed: int = 0
    branches: int = 0
    missed_branches: int = 0

    def add(self, other: Tally) -> None:
        self.statements += other.statements
        self.missed += other.missed
        self.branches += other.branches
        self.missed_branches += other.missed_branches


def _percent(total: int, missed: int) -> str:
    return f"{100.0 * (total - missed) / total:5.1f}%" if total else "    -"


def package_of(path: Path) -> str:
    """`services/gateway`, `libs/common`, `cli`: the workspace member a file belongs to."""
    parts = path.relative_to(ROOT).parts
    return "/".join(parts[:2]) if parts[0] in ("libs", "services") else parts[0]


def main() -> int:
    cov = Coverage(config_file=str(ROOT / "pyproject.toml"))
    cov.load()
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "coverage.json"
        try:
            # Quietly, and without its own fail_under verdict: pytest-cov gives that.
            cov.json_report(outfile=str(out))
        except NoDataError:
            print("no coverage data: run pytest with --cov first", file=sys.stderr)
            return 1
        report = json.loads(out.read_text())
    packages: dict[str, Tally] = {}
    for filename, entry in report["files"].items():
        path = (ROOT / filename).resolve()
        if not path.is_relative_to(ROOT):
            continue
        summary = entry["summary"]
        tally = Tally(
            statements=summary["num_statements"],
            missed=summary["missing_lines"],
            branches=summary.get("num_branches", 0),
            missed_branches=summary.get("missing_branches", 0),
        )
        packages.setdefault(package_of(path), Tally()).add(tally)
    total = Tally()
    print(f"{'package':<22}{'lines':>8}{'covered':>10}{'branches':>10}{'covered':>10}")
    for name, tally in sorted(packages.items()):
        total.add(tally)
        print(
            f"{name:<22}{tally.statements:>8}{_percent(tally.statements, tally.missed):>10}"
            f"{tally.branches:>10}{_percent(tally.branches, tally.missed_branches):>10}"
        )
    print(
        f"{'total':<22}{total.statements:>8}{_percent(total.statements, total.missed):>10}"
        f"{total.branches:>10}{_percent(total.branches, total.missed_branches):>10}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
