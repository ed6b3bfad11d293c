"""docs/ARCHITECTURE.md stays true: its tree names every module and package there is, and
its import contract is the one pyproject.toml has import-linter check."""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DOC = (ROOT / "docs" / "ARCHITECTURE.md").read_text(encoding="utf-8")


def _block(heading: str) -> str:
    section = DOC.split(f"## {heading}", 1)[1]
    return section.split("```", 2)[1]


def test_the_tree_names_every_module_of_every_package() -> None:
    tree = _block("The tree")
    words = set(re.findall(r"[\w.]+", tree))
    missing = []
    for path in sorted((ROOT / "relayd").rglob("*.py")):
        if path.name == "__init__.py":
            name = path.parent.name
            if path.parent != ROOT / "relayd" and f"{name}/" not in tree:
                missing.append(str(path.parent.relative_to(ROOT)))
        elif path.stem not in words and path.name not in words:
            missing.append(str(path.relative_to(ROOT)))
    assert missing == []


def test_the_contract_shown_is_the_one_checked() -> None:
    shown = [line.strip() for line in _block("The import contract").strip().splitlines()]
    config = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    (layers,) = [
        c["layers"] for c in config["tool"]["importlinter"]["contracts"] if c["type"] == "layers"
    ]
    assert shown == [layer.replace("relayd.", "") for layer in layers]


def test_the_daemon_loads_the_status_page_only_where_it_serves_it() -> None:
    """Jinja2 and the page's modules cost every process that imports them about 2 MiB: intake
    workers and a daemon without [admin] listen import the daemon, never the page."""
    probe = "import sys, relayd.daemon.relayd; print('jinja2' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "False"
