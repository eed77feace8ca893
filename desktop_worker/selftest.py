"""``desktop-worker --self-test``: check an installation from the inside, with no network.

Meant for the frozen bundle (``make package`` and the Windows CI run it on the built
executable), and it works from source too. Checks, in order:

1. **version**: the bundle knows its own version (the package metadata was bundled); a
   frozen build that does not would be refused by every hub as too old.
2. **qt**: the Qt platform plugin loads: a ``QGuiApplication`` on ``QT_QPA_PLATFORM``
   (default ``offscreen``) starts and reports that platform.
3. **engine**: ``desktop_worker.engine`` (and with it ``hub.protocol.couch``, requests, pydantic)
   imports.
4. **handlers**: every built-in handler module imports and has ``run``.
5. **child-run**: ``demo.sleep`` with ``ms=0`` runs in a child process through
   ``runner.start_run`` (proves multiprocessing works in the frozen app).
6. **tls**: an SSL context built on certifi's CA bundle holds at least 100 CA certificates
   (the bundled OpenSSL and the CA store are there and parse).
7. **keyring**: the platform's keyring backend module imports; the active backend's name
   is reported (``fail`` where the desktop has no keyring service, e.g. CI).

Prints one line: ``self-test ok: v0.1.0 qt=offscreen engine handlers=6 child-run
tls-cas=146 keyring=SecretService`` or ``self-test FAILED: <what>; <what>`` and returns 0
or 1. A windowed executable on Windows has no stdout: the line then goes to the file named
by ``COUCHFARM_SELF_TEST_OUT``, or to ``self-test.txt`` in the user data directory.
"""

from __future__ import annotations

import importlib
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import cast

MIN_CA_CERTS = 100
CHILD_RUN_TIMEOUT_S = 60.0
OUT_ENV = "COUCHFARM_SELF_TEST_OUT"


class CheckFailed(Exception):
    """One check failed; the message says what and how it showed."""


def check_version() -> str:
    from hub.protocol.version import __version__, is_source_version

    if getattr(sys, "frozen", False) and is_source_version(__version__):
        raise CheckFailed(
            "version: the bundle does not know its version (couchfarm's package metadata "
            "was not bundled; the spec needs copy_metadata('couchfarm'))"
        )
    return f"v{__version__}"


def _plugin_files(platform: str) -> list[Path]:
    """Where Qt may look for the platform plugin, and which of those files exist."""
    from PySide6.QtCore import QLibraryInfo

    dirs = [Path(QLibraryInfo.path(QLibraryInfo.LibraryPath.PluginsPath))]
    dirs += [Path(p) for p in os.environ.get("QT_PLUGIN_PATH", "").split(os.pathsep) if p]
    stem = f"q{platform}"
    found = []
    for base in dirs:
        folder = base / "platforms"
        if folder.is_dir():
            found += [f for f in folder.iterdir() if f.stem in (stem, f"lib{stem}")]
    return found


def check_qt() -> str:
    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
    platform = os.environ["QT_QPA_PLATFORM"].split(":", 1)[0]
    try:
        from PySide6.QtGui import QGuiApplication
    except ImportError as exc:
        raise CheckFailed(f"qt: PySide6 does not import: {exc}") from exc
    app = cast("QGuiApplication | None", QGuiApplication.instance())
    if app is None:
        # Qt aborts the process when a platform plugin cannot load; look for it first so
        # a missing file gives a verdict instead of an abort.
        if not _plugin_files(platform):
            raise CheckFailed(f"qt: the '{platform}' platform plugin is not in the bundle")
        app = QGuiApplication([sys.argv[0] if sys.argv else "couchfarm", "-platform", platform])
    name = QGuiApplication.platformName()
    if not name:
        raise CheckFailed(f"qt: QGuiApplication did not start on '{platform}'")
    if app.primaryScreen() is None:
        raise CheckFailed(f"qt: platform '{name}' started but has no screen")
    # Collation and locale case mapping go through ICU on Linux (the bundle trims its data)
    from PySide6.QtCore import QCollator, QLocale

    if QCollator(QLocale("en_US")).compare("apple", "Banana") >= 0:
        raise CheckFailed("qt: collation sorts 'apple' after 'Banana' (ICU data?)")
    if QLocale("de_DE").toUpper("straße") != "STRASSE":
        raise CheckFailed("qt: locale-aware upper case does not work (ICU data?)")
    return f"qt={name}"


def check_engine() -> str:
    try:
        from desktop_worker.engine import Engine
    except Exception as exc:
        raise CheckFailed(f"engine: does not import: {type(exc).__name__}: {exc}") from exc
    if not callable(getattr(Engine, "start", None)):
        raise CheckFailed("engine: Engine has no start()")
    return "engine"


def check_handlers() -> str:
    from desktop_worker.handlers import BUILTIN_MODULES

    broken = []
    for kind, module in sorted(BUILTIN_MODULES.items()):
        try:
            if not callable(getattr(importlib.import_module(module), "run", None)):
                broken.append(f"{kind} (no run)")
        except Exception as exc:
            broken.append(f"{kind} ({type(exc).__name__}: {exc})")
    if broken:
        raise CheckFailed("handlers: " + ", ".join(broken))
    return f"handlers={len(BUILTIN_MODULES)}"


def check_child_run() -> str:
    from desktop_worker import runner

    started = time.monotonic()
    handle = runner.start_run(
        "demo.sleep",
        {"ms": 0},
        runner.Limits(timeout_s=CHILD_RUN_TIMEOUT_S),
        runner.Policy(),
    )
    outcome = handle.wait(CHILD_RUN_TIMEOUT_S + 5)
    if outcome is None:
        handle.cancel("self-test gave up")
        raise CheckFailed("child-run: demo.sleep did not finish")
    if outcome.status != "ok" or outcome.output != {"slept_ms": 0}:
        raise CheckFailed(f"child-run: demo.sleep failed: {outcome.error or outcome.output}")
    if handle.pid is None:
        raise CheckFailed("child-run: the run did not use a child process")
    took = time.monotonic() - started
    return "child-run" if took < 10 else f"child-run({took:.0f}s)"


def check_tls() -> str:
    import ssl

    try:
        import certifi
    except ImportError as exc:
        raise CheckFailed("tls: certifi is not bundled") from exc
    where = certifi.where()
    if not Path(where).is_file():
        raise CheckFailed(f"tls: certifi's CA bundle is missing ({where})")
    try:
        context = ssl.create_default_context(cafile=where)
    except (ssl.SSLError, OSError) as exc:
        raise CheckFailed(f"tls: the CA bundle does not load: {exc}") from exc
    count = int(context.cert_store_stats().get("x509_ca", 0))
    if count < MIN_CA_CERTS:
        raise CheckFailed(f"tls: only {count} CA certificates loaded (expected {MIN_CA_CERTS}+)")
    return f"tls-cas={count}"


NATIVE_KEYRING = {
    "win32": "keyring.backends.Windows",
    "darwin": "keyring.backends.macOS",
}


def check_keyring() -> str:
    try:
        import keyring
    except ImportError as exc:
        raise CheckFailed(f"keyring: does not import: {exc}") from exc
    native = NATIVE_KEYRING.get(sys.platform, "keyring.backends.SecretService")
    try:
        importlib.import_module(native)
    except Exception as exc:
        raise CheckFailed(f"keyring: {native} is not bundled: {exc}") from exc
    try:
        backend = keyring.get_keyring()
    except Exception as exc:
        raise CheckFailed(f"keyring: no backend: {type(exc).__name__}: {exc}") from exc
    module = type(backend).__module__.rsplit(".", 1)[-1]
    return f"keyring={module}"


CHECKS: list[tuple[str, Callable[[], str]]] = [
    ("version", check_version),
    ("qt", check_qt),
    ("engine", check_engine),
    ("handlers", check_handlers),
    ("child-run", check_child_run),
    ("tls", check_tls),
    ("keyring", check_keyring),
]


def run_checks(checks: list[tuple[str, Callable[[], str]]] | None = None) -> tuple[bool, str]:
    """Run every check (one failing does not stop the others): (ok, the one-line verdict)."""
    passed: list[str] = []
    failed: list[str] = []
    for name, check in checks if checks is not None else CHECKS:
        try:
            passed.append(check())
        except CheckFailed as exc:
            failed.append(str(exc))
        except Exception as exc:  # a check that breaks is a failure, not a crash
            failed.append(f"{name}: {type(exc).__name__}: {exc}")
    if failed:
        return False, "self-test FAILED: " + "; ".join(failed)
    return True, "self-test ok: " + " ".join(passed)


def _output_file() -> Path:
    named = os.environ.get(OUT_ENV)
    if named:
        return Path(named)
    from desktop_worker.config import default_data_dir

    return default_data_dir() / "self-test.txt"


def report(line: str) -> None:
    """Print the verdict; a windowed Windows executable has no stdout, so write a file too."""
    stream = sys.stdout
    if stream is not None:
        try:
            print(line, file=stream, flush=True)
        except (OSError, ValueError):
            stream = None
    if stream is None or os.environ.get(OUT_ENV):
        try:
            path = _output_file()
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(line + "\n", encoding="utf-8")
        except OSError:
            pass


def main() -> int:
    ok, line = run_checks()
    report(line)
    return 0 if ok else 1


__all__ = ["CHECKS", "CheckFailed", "main", "report", "run_checks"]
