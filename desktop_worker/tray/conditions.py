"""When the owner lets this PC work: idle time, allowed hours per weekday, mains power.

Pure helpers plus small OS probes; nothing here imports Qt. Each probe says which method it
uses, so the settings can show it ("Idle detector: X11 (xprintidle)").

Idle time:
- Windows: ``GetLastInputInfo`` through ctypes.
- Linux/X11: ``xprintidle`` when it is installed and ``DISPLAY`` is set.
- macOS: ``ioreg -c IOHIDSystem`` (HIDIdleTime).
- anything else: not available; "run only when idle" is then ignored, and the settings say so.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

WEEKDAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
WEEKDAY_NAMES = {
    "mon": "Monday",
    "tue": "Tuesday",
    "wed": "Wednesday",
    "thu": "Thursday",
    "fri": "Friday",
    "sat": "Saturday",
    "sun": "Sunday",
}
NEVER_WORDS = {"off", "none", "never", "no"}
_RANGE = re.compile(r"^\s*(\d{1,2}):(\d{2})\s*[-\u2013]\s*(\d{1,2}):(\d{2})\s*$")


# ---------------------------------------------------------------- idle


@dataclass
class IdleDetector:
    """``idle_seconds()`` is None when the probe fails this time (treated as 'unknown')."""

    name: str
    available: bool
    probe: Callable[[], float | None] | None = None

    def idle_seconds(self) -> float | None:
        if not self.available or self.probe is None:
            return None
        try:
            return self.probe()
        except Exception:
            return None


def _windows_idle() -> float | None:  # pragma: no cover - Windows only
    import ctypes
    from ctypes import wintypes

    class LASTINPUTINFO(ctypes.Structure):
        _fields_ = [("cbSize", wintypes.UINT), ("dwTime", wintypes.DWORD)]

    info = LASTINPUTINFO()
    info.cbSize = ctypes.sizeof(LASTINPUTINFO)
    if not ctypes.windll.user32.GetLastInputInfo(ctypes.byref(info)):  # type: ignore[attr-defined]
        return None
    ticks = ctypes.windll.kernel32.GetTickCount()  # type: ignore[attr-defined]
    return ((ticks - info.dwTime) & 0xFFFFFFFF) / 1000.0


def _command_idle(argv: list[str], parse: Callable[[str], float | None]) -> Callable[[], Any]:
    def probe() -> float | None:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=2, check=False)
        if done.returncode != 0:
            return None
        return parse(done.stdout)

    return probe


def _parse_ms(text: str) -> float | None:
    text = text.strip()
    return int(text) / 1000.0 if text.isdigit() else None


def _parse_ioreg(text: str) -> float | None:
    match = re.search(r'"HIDIdleTime"\s*=\s*(\d+)', text)
    return int(match.group(1)) / 1e9 if match else None


def idle_detector(
    platform: str | None = None,
    environ: Mapping[str, str] | None = None,
    which: Callable[[str], str | None] = shutil.which,
) -> IdleDetector:
    platform = platform or sys.platform
    env = os.environ if environ is None else environ
    if platform == "win32":
        return IdleDetector("Windows (GetLastInputInfo)", True, _windows_idle)
    if platform == "darwin" and which("ioreg"):
        return IdleDetector(
            "macOS (ioreg HIDIdleTime)",
            True,
            _command_idle(["ioreg", "-c", "IOHIDSystem", "-d", "4"], _parse_ioreg),
        )
    if env.get("DISPLAY"):
        tool = which("xprintidle")
        if tool:
            return IdleDetector("X11 (xprintidle)", True, _command_idle([tool], _parse_ms))
        return IdleDetector("not available (install xprintidle for X11)", False)
    return IdleDetector("not available on this system", False)


# ---------------------------------------------------------------- hours


def parse_hours(text: str) -> list[tuple[int, int]] | None:
    """'09:00-17:00, 20:00-23:30' -> minute ranges; '' -> None (all day); 'off' -> []."""
    text = (text or "").strip()
    if not text:
        return None
    if text.lower() in NEVER_WORDS:
        return []
    ranges = []
    for part in text.split(","):
        match = _RANGE.match(part)
        if not match:
            raise ValueError(f"{part.strip()!r} is not a range like 09:00-17:00")
        h1, m1, h2, m2 = (int(g) for g in match.groups())
        start, end = h1 * 60 + m1, h2 * 60 + m2
        if h1 > 23 or m1 > 59 or m2 > 59 or end > 24 * 60:
            raise ValueError(f"{part.strip()!r} is not a time of day")
        if end <= start:
            raise ValueError(
                f"{part.strip()!r}: the end must come after the start (split a range that "
                "crosses midnight over two days)"
            )
        ranges.append((start, end))
    return sorted(ranges)


def hours_problems(hours: Mapping[str, str]) -> list[str]:
    problems = []
    for day in WEEKDAYS:
        try:
            parse_hours(hours.get(day, ""))
        except ValueError as exc:
            problems.append(f"{WEEKDAY_NAMES[day]}: {exc}")
    return problems


def within_hours(hours: Mapping[str, str], now: datetime) -> tuple[bool, str]:
    """(allowed now?, the day's rule as text)."""
    day = WEEKDAYS[now.weekday()]
    text = (hours.get(day) or "").strip()
    try:
        ranges = parse_hours(text)
    except ValueError:
        return True, ""  # a broken rule never stops work; the settings refuse to save it
    if ranges is None:
        return True, ""
    minute = now.hour * 60 + now.minute
    allowed = any(start <= minute < end for start, end in ranges)
    rule = f"{WEEKDAY_NAMES[day][:3]} {text}" if ranges else f"not on {WEEKDAY_NAMES[day]}s"
    return allowed, rule


# ---------------------------------------------------------------- battery


@dataclass(frozen=True)
class Power:
    on_battery: bool
    percent: float | None
    method: str


def power_state(sensors: Callable[[], Any] | None = None) -> Power:
    """psutil.sensors_battery(); a PC without a battery is on mains power."""
    if sensors is None:
        try:
            import psutil

            sensors = psutil.sensors_battery
        except Exception:
            return Power(False, None, "not available")
    try:
        battery = sensors()
    except Exception:
        return Power(False, None, "not available")
    if battery is None:
        return Power(False, None, "no battery")
    plugged = getattr(battery, "power_plugged", None)
    return Power(plugged is False, getattr(battery, "percent", None), "psutil")
