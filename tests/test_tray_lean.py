"""desktop_worker/tray/lean.py: the idle footprint.

Driven by a FakeEngine on a FakeClock (tests/tray_harness.py); Qt runs offscreen. The real
engine inside the app is in tests/test_tray_integration.py.
"""

from __future__ import annotations

import os

pytest_plugins = ["tests.tray_fixtures"]


LEAN_CHECK = """
import linecache, sys
import desktop_worker.tray.app
import desktop_worker.tray.single
assert "cryptography" not in sys.modules, "jwt/cryptography loaded at start"
for name in ("jwt", "dateutil.parser", "more_itertools"):
    assert type(sys.modules[name]).__name__ == "DeferredModule", (name, sys.modules[name])
# Loaded only when used: the runner (first run), ibmcloudant's generated client (never;
# hub/protocol/couch.py uses the SDK core), QtNetwork (Windows' single-instance pipe only).
for name in ("desktop_worker.runner", "multiprocessing", "ibmcloudant", "PySide6.QtNetwork"):
    assert name not in sys.modules, f"{name} loaded at start"
# shiboken reads the source of every module an import statement names once PySide6 is
# loaded; the engine's own dependencies must come before it.
deep = ("ibm_cloud_sdk_core/base_service.py", "pydantic/main.py", "requests/models.py")
scanned = [f for f in linecache.cache if f.endswith(deep)]
assert not scanned, f"the engine's stack was imported after PySide6: {scanned}"
assert not [f for f in linecache.cache if f.endswith("desktop_worker/tray/app.py")]
import jwt
token = jwt.encode({"a": 1}, "k" * 32, algorithm="HS256")
assert jwt.decode(token, "k" * 32, algorithms=["HS256"]) == {"a": 1}
assert type(sys.modules["jwt"]).__name__ == "module"
from ibm_cloud_sdk_core.utils import string_to_datetime
assert string_to_datetime("2026-12-01T09:30:00Z").hour == 9  # the real dateutil, on first use
assert type(sys.modules["dateutil.parser"]).__name__ == "module"
print("lean ok")
"""


def test_tray_starts_without_jwt_and_imports_the_engine_before_qt() -> None:
    import subprocess
    import sys

    env = {**os.environ, "QT_QPA_PLATFORM": "offscreen"}
    done = subprocess.run(
        [sys.executable, "-c", LEAN_CHECK], env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert "lean ok" in done.stdout


def test_quiet_shiboken_check_gives_shibokens_answer() -> None:
    import linecache
    import sys
    import types

    from desktop_worker.tray import lean
    from desktop_worker.tray import tray as tray_module

    linecache.clearcache()
    assert lean._uses_pyside(tray_module) is True  # imports PySide6
    assert lean._uses_pyside(sys.modules["desktop_worker.tray.clock"]) is False
    assert lean._uses_pyside(sys) is False  # built in: no source
    assert lean._uses_pyside(types.ModuleType("made_up")) is False
    assert not linecache.cache
