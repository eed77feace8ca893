"""The PouchDB Server stand-in: its source fixes are applied, or the server refuses to run."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from hub import devserver
from hub.devserver import FIXES_APPLIED, FIXES_SCRIPT, REPO_ROOT

NODE = shutil.which("node")
pytestmark = pytest.mark.skipif(NODE is None, reason="Node.js is installed by make setup")


def _load_with_fixes(module: Path) -> subprocess.CompletedProcess[str]:
    script = f"process.stdout.write(String(typeof require({str(module)!r})))"
    return subprocess.run(
        [str(NODE), "--require", str(FIXES_SCRIPT), "-e", script],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip


@pytest.mark.parametrize(
    ("plugin", "marker"),
    [("pouchdb-validation", FIXES_APPLIED[0]), ("pouchdb-update", FIXES_APPLIED[1])],
)
def test_the_pinned_plugins_load_with_their_fix(plugin: str, marker: bytes) -> None:
    pinned = REPO_ROOT / "node_modules" / plugin / "lib" / "index.js"
    run = _load_with_fixes(pinned)
    assert run.returncode == 0, run.stderr
    # The line hub/devserver.py waits for, then the module itself.
    assert run.stdout.encode().startswith(marker), run.stdout
    assert run.stdout.endswith("object")


def test_a_server_whose_fix_never_applied_is_refused(tmp_path, monkeypatch):
    """As if a future version had moved the file: nothing patched, so no server."""
    unpatched = tmp_path / "no_fixes.js"
    unpatched.write_text("// patches nothing\n")
    monkeypatch.setattr(devserver, "FIXES_SCRIPT", unpatched)
    server = devserver.DevServer(tmp_path / "data")
    with pytest.raises(devserver.DevServerError, match="without its fixes"):
        server.start()
    assert server.process is not None and server.process.poll() is not None  # stopped


def test_an_unknown_version_of_the_plugin_refuses_to_load(tmp_path):
    other = tmp_path / "node_modules" / "pouchdb-validation" / "lib" / "index.js"
    other.parent.mkdir(parents=True)
    other.write_text("exports.version = 'not the pinned one';\n")
    run = _load_with_fixes(other)
    assert run.returncode != 0
    assert "does not contain the text this fix expects" in run.stderr


def test_a_data_directory_in_the_source_tree_outside_var_is_refused():
    """A PouchDB Server log (log.txt) run from the repository's root was once committed."""
    for inside in (REPO_ROOT, REPO_ROOT / "hub" / "data"):
        with pytest.raises(devserver.DevServerError, match="inside the source tree"):
            devserver.DevServer(inside).start()
    assert not (REPO_ROOT / "hub" / "data").exists()
