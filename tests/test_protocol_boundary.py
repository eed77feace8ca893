"""The worker depends on the protocol core (hub.protocol) and on nothing else of the hub."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _hub_imports(package: Path) -> dict[str, set[str]]:
    found: dict[str, set[str]] = {}
    for path in package.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names: list[str] = []
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            for name in names:
                if name == "hub" or name.startswith("hub."):
                    found.setdefault(str(path.relative_to(ROOT)), set()).add(name)
    return found


def test_the_worker_source_imports_only_the_protocol_core() -> None:
    outside = {
        path: sorted(n for n in names if not n.startswith("hub.protocol"))
        for path, names in _hub_imports(ROOT / "desktop_worker").items()
    }
    assert {p: n for p, n in outside.items() if n} == {}


def test_the_protocol_core_imports_nothing_of_the_hub_services() -> None:
    outside = {
        path: sorted(n for n in names if not n.startswith("hub.protocol"))
        for path, names in _hub_imports(ROOT / "hub" / "protocol").items()
    }
    assert {p: n for p, n in outside.items() if n} == {}


def test_a_running_worker_loads_no_hub_service() -> None:
    """What ``import`` actually pulls in, lazy imports and the tray included."""
    probe = (
        "import json, sys\n"
        "import desktop_worker.cli, desktop_worker.engine, desktop_worker.runner\n"
        "import desktop_worker.selftest, desktop_worker.tray.app, desktop_worker.tray.diagnose\n"
        "import desktop_worker.tray.wizard, desktop_worker.confirm, desktop_worker.handlers\n"
        "print(json.dumps(sorted(m for m in sys.modules if m == 'hub' or m.startswith('hub.'))))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, check=True,
        env={"QT_QPA_PLATFORM": "offscreen", "PATH": "/usr/bin:/bin"},
    )  # fmt: skip
    loaded = json.loads(out.stdout.strip().splitlines()[-1])
    assert "hub.protocol.couch" in loaded  # the probe really loaded the worker
    assert [
        m for m in loaded if m not in ("hub", "hub.protocol") and not m.startswith("hub.protocol.")
    ] == []
