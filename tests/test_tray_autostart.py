"""desktop_worker/tray/autostart.py: start at login (XDG autostart, the Windows Run key).

Driven by a FakeEngine on a FakeClock (tests/tray_harness.py); Qt runs offscreen. The real
engine inside the app is in tests/test_tray_integration.py.
"""

from __future__ import annotations

from pathlib import Path

from desktop_worker.tray import autostart
from tests.tray_harness import (
    Harness,
)

pytest_plugins = ["tests.tray_fixtures"]


def test_start_at_login_writes_and_removes_the_xdg_autostart_file(tmp_path: Path) -> None:
    env = {"XDG_CONFIG_HOME": str(tmp_path)}
    where = autostart.set_start_at_login(
        True, platform="linux", environ=env, command=["/opt/couchfarm/worker", "--minimized"]
    )
    file = tmp_path / "autostart" / "couchfarm-worker.desktop"
    assert where == str(file)
    body = file.read_text()
    assert "Exec=/opt/couchfarm/worker --minimized" in body and "Type=Application" in body
    assert autostart.is_start_at_login(platform="linux", environ=env)
    autostart.set_start_at_login(False, platform="linux", environ=env)
    assert not file.exists()
    assert not autostart.is_start_at_login(platform="linux", environ=env)


def test_start_at_login_uses_the_run_key_on_windows() -> None:
    class FakeWinreg:
        HKEY_CURRENT_USER = "HKCU"
        REG_SZ = 1

        def __init__(self) -> None:
            self.values: dict[str, str] = {}

        def CreateKey(self, root: str, path: str) -> str:
            return f"{root}\\{path}"

        OpenKey = CreateKey

        def SetValueEx(self, key: str, name: str, _r: int, _t: int, value: str) -> None:
            self.values[f"{key}\\{name}"] = value

        def DeleteValue(self, key: str, name: str) -> None:
            del self.values[f"{key}\\{name}"]

        def QueryValueEx(self, key: str, name: str) -> str:
            try:
                return self.values[f"{key}\\{name}"]
            except KeyError:
                raise FileNotFoundError(name) from None

        def CloseKey(self, key: str) -> None:
            pass

    reg = FakeWinreg()
    autostart.set_start_at_login(
        True, platform="win32", winreg=reg, command=["C:\\Program Files\\Couchfarm\\couchfarm.exe"]
    )
    key = "HKCU\\Software\\Microsoft\\Windows\\CurrentVersion\\Run\\Couchfarm"
    assert reg.values[key] == '"C:\\Program Files\\Couchfarm\\couchfarm.exe"'
    assert autostart.is_start_at_login(platform="win32", winreg=reg)
    autostart.set_start_at_login(False, platform="win32", winreg=reg)
    assert not autostart.is_start_at_login(platform="win32", winreg=reg)


def test_start_at_login_setting_writes_the_desktop_file(tray: Harness) -> None:
    values = {**tray.app.store.load(), **tray.app.values, "start_at_login": True}
    tray.app.apply_settings(values)
    file = tray.tmp / "xdg" / "autostart" / "couchfarm-worker.desktop"
    assert file.exists()
    tray.app.apply_settings({**values, "start_at_login": False})
    assert not file.exists()
