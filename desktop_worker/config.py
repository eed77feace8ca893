"""The worker's settings: a TOML file, then command-line flags, then the password.

Password resolution order (first that gives one wins):

1. the OS keyring (``keyring`` package, service ``couchfarm``, username = worker name);
   a machine with no keyring backend is not an error, the lookup is just skipped;
2. ``--password-file`` (or ``password_file`` in the TOML file);
3. the environment variable ``COUCHFARM_WORKER_PASSWORD``.

The password never appears in the file, in ``repr()`` or in a log line.
"""

from __future__ import annotations

import os
import re
import sys
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from hub.protocol.model import KIND_PATTERN, NAME_PATTERN, TUBE_PATTERN

KEYRING_SERVICE = "couchfarm"
PASSWORD_ENV = "COUCHFARM_WORKER_PASSWORD"
# Measured with bench/claim_k.py on PouchDB Server (1000 ready occurrences, 2 cores, two runs):
# K=1 loses 37-58% of claim PUTs and needs 3.2-4.8 requests per claim; K=3/5/10 all reach the
# same 40-50 claims/s (bounded by the view read, ~80-300 ms under load), and the lost share
# falls as K grows (4 threads: 17-24%, 11-15%, 5-7%; 16 threads: 22-53%, 27-39%, 18-26%),
# so K=10 costs the fewest requests per claim (2.06-2.38) while staying within the first ten
# rows of turn order.
DEFAULT_CLAIM_K = 10
# Claims held ahead of free slots in a backlog (decision 16): on CouchDB 3.5 a _bulk_docs of
# 8 claims costs the server about a third of 8 single claim PUTs (bench/claim_race.py). 15:
# one slot plus 15 is a whole page of a ready bucket (claim.ROWS_PER_BUCKET) in one
# _bulk_docs; against 8, server CPU per claim at 16 workers fell 5.3 -> 3.9 ms (decision 19).
DEFAULT_CLAIM_AHEAD = 15


class ConfigError(ValueError):
    """The settings are incomplete or wrong; the message names what to fix."""


def default_data_dir() -> Path:
    """Per-user data directory: %LOCALAPPDATA%\\Couchfarm, ~/Library/..., $XDG_DATA_HOME."""
    if sys.platform == "win32":
        base = os.environ.get("LOCALAPPDATA") or str(Path.home() / "AppData" / "Local")
        return Path(base) / "Couchfarm"
    if sys.platform == "darwin":
        return Path.home() / "Library" / "Application Support" / "Couchfarm"
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "couchfarm"


def default_spool_path(name: str) -> Path:
    return default_data_dir() / f"spool-{name or 'worker'}.sqlite3"


@dataclass
class WorkerConfig:
    """Everything the engine needs. ``password`` is excluded from ``repr``."""

    hub_urls: list[str] = field(default_factory=list)
    name: str = ""
    password: str = field(default="", repr=False)
    db: str = "farm"
    tubes: list[str] = field(default_factory=lambda: ["default"])
    slots: int = 1
    # What may run here.
    allow_private_network: bool = False
    kinds: list[str] | None = None  # None: every kind the runner knows
    # Script allow-list: name = path, or name = {path, interpreter, args_schema, timeout_s}.
    scripts: dict[str, Any] = field(default_factory=dict)
    # Run limits, handed to the runner.
    run_timeout_s: float = 60.0
    memory_mb: int = 512
    max_output_bytes: int = 65536
    # The owner's caps on what runs take from the PC (see desktop_worker.runner): the most
    # of one CPU core a run may use, in percent (100 = no cap), and the network bandwidth
    # all runs together may use, in KiB/s (0 = no cap; each of the slots gets an equal share).
    cpu_cap_percent: int = 100
    bandwidth_cap_kbps: int = 0
    # Lease: touch when this fraction of the TTR has passed since the last lease write.
    touch_at: float = 0.5
    # Claiming: pick at random among the first K ready rows.
    claim_k: int = DEFAULT_CLAIM_K
    # In a backlog (the ready view's page was full), claim this many more than the free
    # slots in the same _bulk_docs and start them as slots free: one validated write then
    # carries several claims (docs/DECISIONS.md decision 16). 0: only what slots can start.
    claim_ahead: int = DEFAULT_CLAIM_AHEAD
    # Waiting: poll the ready view this often when the _changes feed is broken.
    poll_interval_s: float = 30.0
    # Heartbeat: worker doc written at most this often.
    heartbeat_interval_s: float = 30.0
    # Spool: local SQLite file of writes not yet confirmed; retry cadence.
    spool_path: Path | None = None
    spool_retry_s: float = 5.0
    standby_check_s: float = 10.0
    # TLS.
    verify_tls: bool = True
    ca_bundle: str | None = None
    password_file: str | None = None

    def __post_init__(self) -> None:
        if self.spool_path is not None and not isinstance(self.spool_path, Path):
            self.spool_path = Path(self.spool_path)

    # ------------------------------------------------------------ derived

    @property
    def resolved_spool_path(self) -> Path:
        return self.spool_path or default_spool_path(self.name)

    @property
    def verify(self) -> bool | str:
        """What ``hub.protocol.couch.Couch(verify=...)`` takes: a CA bundle path, or True/False."""
        if not self.verify_tls:
            return False
        return self.ca_bundle or True

    @property
    def has_standby(self) -> bool:
        return len(self.hub_urls) > 1

    def validate(self, *, need_password: bool = True) -> WorkerConfig:
        problems: list[str] = []
        if not self.hub_urls:
            problems.append("no hub URL: pass --hub https://host:6984[,https://standby:6984]")
        for url in self.hub_urls:
            if not re.match(r"^https?://", url):
                problems.append(f"hub URL {url!r} must start with http:// or https://")
        if not self.name:
            problems.append("no worker name: pass --name or set name in the config file")
        elif not re.fullmatch(NAME_PATTERN, self.name):
            problems.append(
                f"worker name {self.name!r} must be lower-case letters, digits, '-' or '_' "
                "(at most 40, starting with a letter or digit)"
            )
        if need_password and not self.password:
            problems.append(
                f"no password for worker {self.name!r}: store it in the OS keyring (service "
                f"{KEYRING_SERVICE!r}, user {self.name!r}), pass --password-file FILE, or set "
                f"{PASSWORD_ENV}"
            )
        if not self.tubes:
            problems.append("no tubes: give at least one (default: 'default')")
        for tube in self.tubes:
            if not re.fullmatch(TUBE_PATTERN, tube):
                problems.append(f"tube {tube!r} is not a valid tube name")
        for kind in self.kinds or []:
            if not re.fullmatch(KIND_PATTERN, kind):
                problems.append(f"kind {kind!r} is not a valid kind name")
        if not 1 <= self.slots <= 256:
            problems.append(f"slots must be 1..256, got {self.slots}")
        if not 1 <= self.cpu_cap_percent <= 100:
            problems.append(
                f"cpu_cap_percent must be 1..100 (percent of one core), got {self.cpu_cap_percent}"
            )
        if not 0 <= self.bandwidth_cap_kbps <= 10_000_000:
            problems.append(
                f"bandwidth_cap_kbps must be 0 (no cap) to 10000000 KiB/s, "
                f"got {self.bandwidth_cap_kbps}"
            )
        if not 1 <= self.claim_k <= 100:
            problems.append(f"claim_k must be 1..100, got {self.claim_k}")
        if not 0 <= self.claim_ahead <= 64:
            problems.append(f"claim_ahead must be 0..64, got {self.claim_ahead}")
        if not 0.1 <= self.touch_at <= 0.9:
            problems.append(
                f"touch_at must be a fraction of the TTR in 0.1..0.9, got {self.touch_at}"
            )
        for script, spec in (self.scripts or {}).items():
            path = spec if isinstance(spec, str) else (spec or {}).get("path")
            if not isinstance(path, str) or not path:
                problems.append(f"script {script!r} needs a path")
        if self.ca_bundle and not Path(self.ca_bundle).is_file():
            problems.append(f"ca_bundle {self.ca_bundle} is not a file")
        if problems:
            raise ConfigError("; ".join(problems))
        return self


# ---------------------------------------------------------------- loading

_FIELD_NAMES = {f.name for f in fields(WorkerConfig)}
_LIST_FIELDS = {"hub_urls", "tubes", "kinds"}
_LIMIT_KEYS = {"timeout_s": "run_timeout_s", "memory_mb": "memory_mb"}


def load_toml(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read a config file into WorkerConfig keyword arguments; unknown keys are errors."""
    file = Path(path)
    try:
        raw = tomllib.loads(file.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"config file {file} does not exist") from None
    except OSError as exc:
        raise ConfigError(f"cannot read config file {file}: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {file} is not valid TOML: {exc}") from None
    if set(raw) == {"worker"} and isinstance(raw["worker"], dict):
        raw = raw["worker"]
    return _normalise(raw, source=str(file))


def _normalise(raw: Mapping[str, Any], source: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    unknown = []
    for key, value in raw.items():
        if key == "password":
            raise ConfigError(
                f"{source}: a password does not belong in the config file; use the OS keyring, "
                f"password_file or {PASSWORD_ENV}"
            )
        if key == "limits" and isinstance(value, dict):
            for limit_key, limit_value in value.items():
                target = _LIMIT_KEYS.get(limit_key, limit_key)
                if target not in _FIELD_NAMES:
                    unknown.append(f"limits.{limit_key}")
                else:
                    out[target] = limit_value
            continue
        if key == "hub_url":
            key = "hub_urls"
        if key not in _FIELD_NAMES:
            unknown.append(key)
            continue
        if key in _LIST_FIELDS and isinstance(value, str):
            value = [part.strip() for part in value.split(",") if part.strip()]
        if key == "scripts" and not isinstance(value, dict):
            raise ConfigError(f"{source}: scripts must be a table of name = path")
        out[key] = value
    if unknown:
        known = ", ".join(sorted(_FIELD_NAMES - {"password"}))
        raise ConfigError(f"{source}: unknown setting(s) {', '.join(unknown)}; known: {known}")
    return out


def keyring_password(name: str) -> str | None:
    """The password stored in the OS keyring, or None (also when there is no keyring)."""
    try:
        import keyring
        from keyring.errors import KeyringError
    except Exception:
        return None
    try:
        return keyring.get_password(KEYRING_SERVICE, name) or None
    except KeyringError:
        return None
    except Exception:  # a broken backend (no D-Bus session...) must not stop the worker
        return None


def read_password_file(path: str | os.PathLike[str]) -> str:
    file = Path(path)
    try:
        secret = file.read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        raise ConfigError(f"password file {file} does not exist") from None
    except OSError as exc:
        raise ConfigError(f"cannot read password file {file}: {exc.strerror}") from None
    if not secret:
        raise ConfigError(f"password file {file} is empty")
    return secret


def resolve_password(
    name: str,
    password_file: str | None,
    *,
    environ: Mapping[str, str] | None = None,
    keyring_lookup: Callable[[str], str | None] = keyring_password,
) -> tuple[str | None, str]:
    """(password, where it came from). The source is safe to log; the password is not."""
    env = os.environ if environ is None else environ
    if name:
        secret = keyring_lookup(name)
        if secret:
            return secret, "keyring"
    if password_file:
        return read_password_file(password_file), f"file {password_file}"
    secret = env.get(PASSWORD_ENV)
    if secret:
        return secret, f"environment {PASSWORD_ENV}"
    return None, "none"


def build_config(
    file: str | os.PathLike[str] | None = None,
    overrides: Mapping[str, Any] | None = None,
    *,
    environ: Mapping[str, str] | None = None,
    keyring_lookup: Callable[[str], str | None] = keyring_password,
    need_password: bool = True,
) -> tuple[WorkerConfig, str]:
    """File settings, then overrides (flags; None means 'not given'), then the password.

    Returns (config, password source) and raises :class:`ConfigError` naming what is missing.
    """
    values: dict[str, Any] = load_toml(file) if file else {}
    for key, value in (overrides or {}).items():
        if value is None:
            continue
        if key not in _FIELD_NAMES:
            raise ConfigError(f"unknown setting {key!r}")
        values[key] = value
    try:
        config = WorkerConfig(**values)
    except TypeError as exc:
        raise ConfigError(f"bad settings: {exc}") from None
    _check_types(config)
    secret, source = resolve_password(
        config.name, config.password_file, environ=environ, keyring_lookup=keyring_lookup
    )
    if secret:
        config = replace(config, password=secret)
    config.validate(need_password=need_password)
    return config, source


def _check_types(config: WorkerConfig) -> None:
    problems = []
    for name in ("hub_urls", "tubes"):
        value = getattr(config, name)
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            problems.append(f"{name} must be a list of strings")
    if config.kinds is not None and (
        not isinstance(config.kinds, list) or not all(isinstance(v, str) for v in config.kinds)
    ):
        problems.append("kinds must be a list of strings")
    for name in (
        "slots",
        "claim_k",
        "claim_ahead",
        "memory_mb",
        "max_output_bytes",
        "cpu_cap_percent",
        "bandwidth_cap_kbps",
    ):
        if not isinstance(getattr(config, name), int) or isinstance(getattr(config, name), bool):
            problems.append(f"{name} must be an integer")
    for name in ("allow_private_network", "verify_tls"):
        if not isinstance(getattr(config, name), bool):
            problems.append(f"{name} must be true or false")
    for name in (
        "run_timeout_s",
        "touch_at",
        "poll_interval_s",
        "heartbeat_interval_s",
        "spool_retry_s",
        "standby_check_s",
    ):
        value = getattr(config, name)
        if not isinstance(value, int | float) or isinstance(value, bool):
            problems.append(f"{name} must be a number")
    if problems:
        raise ConfigError("; ".join(problems))
