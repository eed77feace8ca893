"""Start at login: the HKCU Run key on Windows, an XDG autostart entry on Linux/BSD, a
LaunchAgent on macOS. Each function takes its environment as arguments, so tests run the
Linux path against a temporary ``XDG_CONFIG_HOME`` (and the Windows path against a fake
``winreg``)."""

from __future__ import annotations

import contextlib
import os
import shlex
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

APP_ID = "couchfarm-worker"
RUN_KEY = r"Software\Microsoft\Windows\CurrentVersion\Run"
RUN_VALUE = "Couchfarm"


def default_command() -> list[str]:
    """How to start the tray app again: the frozen executable, or this Python with -m."""
    if getattr(sys, "frozen", False):
        return [sys.executable]
    return [sys.executable, "-m", "desktop_worker.tray"]


def desktop_file(environ: Mapping[str, str] | None = None) -> Path:
    env = os.environ if environ is None else environ
    base = env.get("XDG_CONFIG_HOME") or str(Path(env.get("HOME") or Path.home()) / ".config")
    return Path(base) / "autostart" / f"{APP_ID}.desktop"


def launch_agent() -> Path:
    return Path.home() / "Library" / "LaunchAgents" / "org.couchfarm.worker.plist"


def _desktop_entry(command: list[str]) -> str:
    return (
        "[Desktop Entry]\n"
        "Type=Application\n"
        "Name=Couchfarm worker\n"
        "Comment=Runs Couchfarm jobs while this computer is free\n"
        f"Exec={shlex.join(command)}\n"
        "Terminal=false\n"
        "X-GNOME-Autostart-enabled=true\n"
    )


def _plist(command: list[str]) -> str:
    args = "".join(f"<string>{part}</string>" for part in command)
    return (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        '<plist version="1.0"><dict>'
        "<key>Label</key><string>org.couchfarm.worker</string>"
        f"<key>ProgramArguments</key><array>{args}</array>"
        "<key>RunAtLoad</key><true/></dict></plist>\n"
    )


def _windows_command(command: list[str]) -> str:
    return " ".join(f'"{part}"' if " " in part else part for part in command)


def set_start_at_login(
    enabled: bool,
    *,
    command: list[str] | None = None,
    platform: str | None = None,
    environ: Mapping[str, str] | None = None,
    winreg: Any = None,
) -> str:
    """Turn start-at-login on or off; returns where it is recorded (for the dialog)."""
    platform = platform or sys.platform
    command = command or default_command()
    if platform == "win32":
        if winreg is None:  # pragma: no cover - Windows only
            import winreg as real

            winreg = real
        key = winreg.CreateKey(winreg.HKEY_CURRENT_USER, RUN_KEY)
        try:
            if enabled:
                winreg.SetValueEx(key, RUN_VALUE, 0, winreg.REG_SZ, _windows_command(command))
            else:
                with contextlib.suppress(FileNotFoundError, OSError):
                    winreg.DeleteValue(key, RUN_VALUE)
        finally:
            winreg.CloseKey(key)
        return f"HKCU\\{RUN_KEY}\\{RUN_VALUE}"
    if platform == "darwin":
        path = launch_agent()
        body = _plist(command)
    else:
        path = desktop_file(environ)
        body = _desktop_entry(command)
    if enabled:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(body, encoding="utf-8")
    else:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
    return str(path)


def is_start_at_login(
    *, platform: str | None = None, environ: Mapping[str, str] | None = None, winreg: Any = None
) -> bool:
    platform = platform or sys.platform
    if platform == "win32":
        if winreg is None:  # pragma: no cover - Windows only
            import winreg as real

            winreg = real
        try:
            key = winreg.OpenKey(winreg.HKEY_CURRENT_USER, RUN_KEY)
        except OSError:
            return False
        try:
            winreg.QueryValueEx(key, RUN_VALUE)
            return True
        except OSError:
            return False
        finally:
            winreg.CloseKey(key)
    path = launch_agent() if platform == "darwin" else desktop_file(environ)
    return path.exists()
