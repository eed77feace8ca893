"""The settings table and where each setting lives. No Qt here.

One declarative table (:data:`FIELDS`: key, type, default, label, help) drives the
settings dialog, the first-run wizard and the round-trip tests. Each key is stored where
it belongs:

- keys the engine knows (fields of :class:`desktop_worker.config.WorkerConfig`) go to the
  worker's TOML file, the same file ``desktop-worker --headless --config FILE`` reads;
- the password goes to the OS keyring (service ``couchfarm``, user = worker name). Where
  no keyring backend exists, to a file only the user can read (0600) in the data
  directory, named by ``password_file`` in the TOML file, and the dialog says so;
- keys only the tray knows (idle, hours, battery, caps, start at login) go to
  ``tray.toml`` beside the worker's file, table ``[settings]``; the tray's memory (the
  first-close notice, a pause that outlives a restart) goes to table ``[state]`` there.

A key moves to the worker file by itself once WorkerConfig grows a field of that name
(e.g. ``cpu_cap_percent``): the tray never writes a key ``load_toml`` would refuse.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import sys
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

from desktop_worker.config import (
    KEYRING_SERVICE,
    ConfigError,
    WorkerConfig,
    build_config,
    default_data_dir,
)

WORKER_FIELDS = {f.name for f in fields(WorkerConfig)} - {"password"}


@dataclass(frozen=True)
class Field:
    key: str
    type: str  # text, password, urls, list, int, bool, kinds, scripts, hours
    default: Any
    label: str
    help: str
    section: str
    minimum: int | None = None
    maximum: int | None = None

    @property
    def store(self) -> str:
        if self.type == "password":
            return "secret"
        return "worker" if self.key in WORKER_FIELDS else "tray"


FIELDS: tuple[Field, ...] = (
    Field(
        "hub_urls",
        "urls",
        [],
        "Hub URLs",
        "The hub's CouchDB address, one per line: the primary first, then the standby.",
        "Hub",
    ),
    Field(
        "name",
        "text",
        "",
        "Worker name",
        "This worker's CouchDB user name (lower-case letters, digits, - and _).",
        "Hub",
    ),
    Field(
        "password",
        "password",
        "",
        "Password",
        "The worker's password: kept in the OS keyring (without one, in a file only you "
        "can read), never in the settings file.",
        "Hub",
    ),
    Field("db", "text", "farm", "Database", "The hub's live database (normally farm).", "Hub"),
    Field(
        "tubes",
        "list",
        ["default"],
        "Tubes",
        "The queues this worker serves, comma-separated (e.g. default, windows).",
        "Work",
    ),
    Field("slots", "int", 1, "Parallel slots", "How many runs at the same time.", "Work", 1, 256),
    Field(
        "kinds",
        "kinds",
        None,
        "Allowed job kinds",
        "The kinds of work this PC may run; all ticked means every built-in kind.",
        "Work",
    ),
    Field(
        "scripts",
        "scripts",
        {},
        "Allowed scripts",
        "Scripts tasks may run here, one 'name = path' per line. No other script ever runs.",
        "Work",
    ),
    Field(
        "allow_private_network",
        "bool",
        False,
        "Allow private network targets",
        "Let network checks reach addresses in your own network (off: public addresses only).",
        "Work",
    ),
    Field(
        "idle_minutes",
        "int",
        0,
        "Run only when idle for (minutes)",
        "Start work only after this many minutes without keyboard or mouse input; 0 = always.",
        "When",
        0,
        1440,
    ),
    Field(
        "hours",
        "hours",
        {},
        "Allowed hours",
        "Per weekday: empty = all day, 'off' = not that day, or ranges like "
        "09:00-17:00, 20:00-23:00.",
        "When",
    ),
    Field(
        "pause_on_battery",
        "bool",
        True,
        "Pause on battery",
        "Take no new work while the computer runs on battery.",
        "When",
    ),
    Field(
        "cpu_cap_percent",
        "int",
        100,
        "CPU cap (%)",
        "The most of one CPU core a run may use (100 = no cap); a run over it is paused "
        "for a moment. A capped run takes longer and still has the same time limit.",
        "Limits",
        5,
        100,
    ),
    Field(
        "bandwidth_cap_kbps",
        "int",
        0,
        "Bandwidth cap (KiB/s)",
        "The most network bandwidth HTTP runs may use together (each parallel slot gets "
        "an equal share); 0 = no cap.",
        "Limits",
        0,
        10_000_000,
    ),
    Field(
        "start_at_login",
        "bool",
        False,
        "Start at login",
        "Start Couchfarm when you log in (Windows: Run key; Linux: XDG autostart).",
        "System",
    ),
)
FIELD_BY_KEY = {f.key: f for f in FIELDS}
SECTIONS = ("Hub", "Work", "When", "Limits", "System")
# Settings that change what the engine does: saving a change restarts it.
ENGINE_KEYS = {f.key for f in FIELDS if f.store in ("worker", "secret")}


def defaults() -> dict[str, Any]:
    return {f.key: json.loads(json.dumps(f.default)) for f in FIELDS}


def allow_list(values: Mapping[str, Any]) -> tuple[tuple[str, ...] | None, tuple[str, ...]]:
    """(allowed kinds or None for all, allowed script names): what a change notifies."""
    kinds = values.get("kinds")
    return (
        None if kinds is None else tuple(sorted(kinds)),
        tuple(sorted((values.get("scripts") or {}).keys())),
    )


# ---------------------------------------------------------------- TOML out


_BARE_KEY = re.compile(r"^[A-Za-z0-9_-]+$")


def _key(key: str) -> str:
    return key if _BARE_KEY.match(key) else json.dumps(key)


def _value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{_key(k)} = {_value(v)}" for k, v in value.items()) + "}"
    if isinstance(value, Path):
        return json.dumps(str(value))
    raise TypeError(f"cannot write {type(value).__name__} to TOML")


def dumps_toml(data: Mapping[str, Any], header: str = "") -> str:
    """A small TOML writer: scalars, lists, inline tables, and one level of [tables]."""
    lines = [f"# {line}" for line in header.splitlines()] if header else []
    tables = []
    for key, value in data.items():
        if value is None:
            continue
        if (isinstance(value, dict) and key != "scripts") or key in ("settings", "state"):
            tables.append((key, value))
        else:
            lines.append(f"{_key(key)} = {_value(value)}")
    for name, table in tables:
        lines.append("")
        lines.append(f"[{_key(name)}]")
        for key, value in table.items():
            if value is not None:
                lines.append(f"{_key(key)} = {_value(value)}")
    return "\n".join(lines) + "\n"


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"cannot read {path}: {exc}") from None


def _write_private(path: Path, text: str) -> None:
    """Write atomically, readable by the user only."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(text)
    os.chmod(tmp, 0o600)
    os.replace(tmp, path)


# ---------------------------------------------------------------- secrets


class SecretStore:
    """The worker password: OS keyring when there is one, else a 0600 file."""

    def __init__(self, fallback_dir: Path, backend: Any = None) -> None:
        self.fallback_dir = Path(fallback_dir)
        self._backend = backend

    def _keyring(self) -> Any:
        if self._backend is not None:
            return self._backend
        try:
            import keyring

            return keyring.get_keyring()
        except Exception:
            return None

    @property
    def keyring_available(self) -> bool:
        backend = self._keyring()
        if backend is None:
            return False
        try:
            from keyring.backends import fail

            if isinstance(backend, fail.Keyring):
                return False
        except Exception:
            pass
        if getattr(backend, "backends", None) == []:  # a chainer with nothing in it
            return False
        try:
            return float(getattr(backend, "priority", 1)) > 0
        except Exception:
            return True

    def fallback_file(self, name: str) -> Path:
        return self.fallback_dir / f"password-{name or 'worker'}"

    def where(self, name: str) -> str:
        """For the settings dialog: where the password is kept."""
        if self.keyring_available:
            label = type(self._keyring()).__name__
            return f"kept in the OS keyring ({label}, service '{KEYRING_SERVICE}')"
        return (
            "no OS keyring on this system: the password is kept in "
            f"{self.fallback_file(name)} (readable only by you)"
        )

    def get_keyring(self, name: str) -> str | None:
        if not name or not self.keyring_available:
            return None
        try:
            return self._keyring().get_password(KEYRING_SERVICE, name) or None
        except Exception:
            return None

    def get(self, name: str) -> str | None:
        found = self.get_keyring(name)
        if found:
            return found
        file = self.fallback_file(name)
        try:
            return file.read_text(encoding="utf-8").strip() or None
        except OSError:
            return None

    def set(self, name: str, password: str) -> Path | None:
        """Store it; returns the fallback file used, or None when the keyring took it."""
        if self.keyring_available:
            try:
                self._keyring().set_password(KEYRING_SERVICE, name, password)
                with contextlib.suppress(OSError):
                    self.fallback_file(name).unlink()
                return None
            except Exception:
                pass  # a locked or broken keyring: fall back to the file
        file = self.fallback_file(name)
        _write_private(file, password + "\n")
        return file


# ---------------------------------------------------------------- the store


def default_config_dir() -> Path:
    if sys.platform == "win32":
        base = os.environ.get("APPDATA") or str(Path.home() / "AppData" / "Roaming")
        return Path(base) / "Couchfarm"
    if sys.platform == "darwin":
        return Path.home() / "Library" / "Application Support" / "Couchfarm"
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "couchfarm"


class SettingsStore:
    """Reads and writes every setting of :data:`FIELDS` where it belongs."""

    def __init__(
        self,
        config_path: Path | None = None,
        *,
        tray_path: Path | None = None,
        data_dir: Path | None = None,
        secrets: SecretStore | None = None,
    ) -> None:
        self.config_path = Path(config_path or default_config_dir() / "worker.toml")
        self.tray_path = Path(tray_path or self.config_path.with_name("tray.toml"))
        self.data_dir = Path(data_dir or default_data_dir())
        self.secrets = secrets or SecretStore(self.data_dir)

    # ------------------------------------------------------------ raw files

    def _worker_raw(self) -> dict[str, Any]:
        raw = _read_toml(self.config_path)
        if set(raw) == {"worker"} and isinstance(raw["worker"], dict):
            raw = dict(raw["worker"])
        if "hub_url" in raw and "hub_urls" not in raw:
            raw["hub_urls"] = raw.pop("hub_url")
        for key in ("hub_urls", "tubes", "kinds"):
            if isinstance(raw.get(key), str):
                raw[key] = [p.strip() for p in raw[key].split(",") if p.strip()]
        return raw

    def _tray_raw(self) -> dict[str, Any]:
        raw = _read_toml(self.tray_path)
        raw.setdefault("settings", {})
        raw.setdefault("state", {})
        return raw

    @property
    def exists(self) -> bool:
        return self.config_path.exists()

    # ------------------------------------------------------------ values

    def load(self) -> dict[str, Any]:
        """Every field's value (defaults where nothing is stored), password included."""
        values = defaults()
        worker = self._worker_raw()
        tray = self._tray_raw()["settings"]
        for f in FIELDS:
            if f.store == "worker" and f.key in worker:
                values[f.key] = worker[f.key]
            elif f.key in tray:  # a tray key, or one an older tray kept (see _legacy)
                values[f.key] = tray[f.key]
        if isinstance(values.get("scripts"), dict):
            values["scripts"] = dict(values["scripts"])
        values["password"] = self.secrets.get(values.get("name") or "") or ""
        if not values["password"] and worker.get("password_file"):
            with contextlib.suppress(OSError):
                values["password"] = Path(worker["password_file"]).read_text().strip()
        return values

    def save(self, values: Mapping[str, Any]) -> None:
        worker = self._worker_raw()
        tray = self._tray_raw()
        name = str(values.get("name") or worker.get("name") or "")
        for f in FIELDS:
            if f.key not in values:
                continue
            value = values[f.key]
            if f.store == "worker":
                if f.key == "scripts":
                    value = _merge_scripts(worker.get("scripts") or {}, value or {})
                if value is None:
                    worker.pop(f.key, None)
                else:
                    worker[f.key] = value
            if f.store == "tray":
                tray["settings"][f.key] = value
            else:
                tray["settings"].pop(f.key, None)  # moved to the worker file (see _legacy)
        password = values.get("password")
        if password:
            file = self.secrets.set(name, str(password))
            if file is not None:
                worker["password_file"] = str(file)
            elif str(worker.get("password_file", "")).startswith(str(self.secrets.fallback_dir)):
                worker.pop("password_file", None)
        _write_private(
            self.config_path,
            dumps_toml(
                worker,
                "Couchfarm worker settings (written by the tray app; desktop-worker --config reads"
                "\nthe same file). The password is not here: see the OS keyring.",
            ),
        )
        _write_private(self.tray_path, dumps_toml(tray, "Couchfarm tray app settings."))

    # ------------------------------------------------------------ tray memory

    def state(self, key: str, default: Any = None) -> Any:
        return self._tray_raw()["state"].get(key, default)

    def set_state(self, key: str, value: Any) -> None:
        tray = self._tray_raw()
        if value is None:
            tray["state"].pop(key, None)
        else:
            tray["state"][key] = value
        _write_private(self.tray_path, dumps_toml(tray, "Couchfarm tray app settings."))

    # ------------------------------------------------------------ the engine's config

    def _legacy(self) -> dict[str, Any]:
        """Engine settings an older tray kept in tray.toml, before WorkerConfig had them
        (the CPU and bandwidth caps): used until the next save moves them to the worker
        file, so an upgrade does not silently drop a cap the owner set."""
        worker = self._worker_raw()
        tray = self._tray_raw()["settings"]
        return {k: v for k, v in tray.items() if k in WORKER_FIELDS and k not in worker}

    def worker_config(
        self,
        overrides: Mapping[str, Any] | None = None,
        *,
        need_password: bool = True,
        keyring_lookup: Callable[[str], str | None] | None = None,
    ) -> WorkerConfig:
        """The engine's config: the TOML file, then overrides, then the password."""
        given = {k: v for k, v in (overrides or {}).items() if v is not None}
        config, _source = build_config(
            self.config_path if self.exists else None,
            {**self._legacy(), **given},
            keyring_lookup=keyring_lookup or self.secrets.get_keyring,
            need_password=need_password,
        )
        if not config.password:
            found = self.secrets.get(config.name)
            if found:
                config = replace(config, password=found)
        if need_password and not config.password:
            config.validate(need_password=True)
        return config


def _merge_scripts(existing: Mapping[str, Any], edited: Mapping[str, Any]) -> dict[str, Any]:
    """Keep a script's full table (interpreter, args_schema...) when only its path was shown."""
    out: dict[str, Any] = {}
    for name, value in edited.items():
        old = existing.get(name)
        path = value.get("path") if isinstance(value, dict) else value
        if isinstance(old, dict) and old.get("path") == path:
            out[name] = old
        else:
            out[name] = value
    return out


def scripts_to_text(scripts: Mapping[str, Any]) -> str:
    lines = []
    for name, value in (scripts or {}).items():
        path = value.get("path", "") if isinstance(value, dict) else value
        lines.append(f"{name} = {path}")
    return "\n".join(lines)


def scripts_from_text(text: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for number, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if "=" not in line:
            raise ValueError(f"line {number}: write 'name = path'")
        name, path = (part.strip() for part in line.split("=", 1))
        if not name or not path:
            raise ValueError(f"line {number}: write 'name = path'")
        out[name] = path
    return out


def check_values(values: Mapping[str, Any]) -> list[str]:
    """Problems that must be fixed before saving (empty when fine)."""
    from desktop_worker.tray.conditions import hours_problems

    problems: list[str] = []
    known = {k: v for k, v in values.items() if k in WORKER_FIELDS}
    try:
        WorkerConfig(**known).validate(need_password=False)
    except ConfigError as exc:
        problems.extend(str(exc).split("; "))
    except TypeError as exc:
        problems.append(str(exc))
    problems.extend(hours_problems(values.get("hours") or {}))
    return problems
