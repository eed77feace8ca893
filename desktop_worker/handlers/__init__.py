"""Handlers: the code that runs one occurrence of one kind of work.

Each built-in kind has a module here exposing ``run(input, ctx) -> dict`` (JSON-able).
More kinds come from plugins: the entry-point group ``couchfarm.handlers`` maps a kind name
to either a callable ``run(input, ctx)`` or a module with a ``run`` function. A plugin may
declare its input schema (draft 2020-12) as ``input_schema`` on the callable or
``INPUT_SCHEMA`` in the module; without one, any JSON object is accepted.

Handlers raise :class:`HandlerError` to fail. ``permanent=True`` means retrying cannot help
(invalid input, a refused target, a script that is not allowed); otherwise the hub retries.
"""

from __future__ import annotations

import importlib
import logging
import re
import threading
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from importlib import metadata
from types import MappingProxyType, ModuleType
from typing import Any

from desktop_worker.netguard import NetError, NetPolicy, TargetRefused
from hub.protocol.kinds import KIND_SCHEMAS, schema_problems

log = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "couchfarm.handlers"

Handler = Callable[[dict[str, Any], "HandlerContext"], Any]
ProgressCallback = Callable[[float, float, str], None]

BUILTIN_MODULES: Mapping[str, str] = MappingProxyType(
    {
        "http.check": "desktop_worker.handlers.http_check",
        "http.fetch": "desktop_worker.handlers.http_fetch",
        "dns.resolve": "desktop_worker.handlers.dns_resolve",
        "tcp.connect": "desktop_worker.handlers.tcp_connect",
        "script": "desktop_worker.handlers.script",
        "demo.sleep": "desktop_worker.handlers.demo_sleep",
    }
)
assert set(BUILTIN_MODULES) == set(KIND_SCHEMAS)


class HandlerError(Exception):
    """A run failed. ``permanent``: retrying the same input cannot succeed."""

    def __init__(self, message: str, permanent: bool = False) -> None:
        super().__init__(message)
        self.message = message
        self.permanent = permanent


@contextmanager
def network_errors() -> Iterator[None]:
    """Turn netguard's exceptions into HandlerErrors: refusals permanent, the rest transient."""
    try:
        yield
    except TargetRefused as exc:
        raise HandlerError(exc.reason, permanent=True) from exc
    except NetError as exc:
        raise HandlerError(str(exc), permanent=False) from exc


@dataclass(frozen=True)
class ScriptSpec:
    """One entry of the worker's local script allow-list.

    ``path`` is the program. A ``.py`` file runs with this worker's Python unless
    ``interpreter`` says otherwise (an argv prefix, e.g. ``("/usr/bin/bash",)``).
    ``args_schema`` (JSON Schema draft 2020-12) checks the task's ``args``; each argument
    is passed as one argv item ``--name=value`` (scalars as text, others as JSON), in name
    order, and the whole ``args`` object is also written to the script's stdin as JSON.
    """

    path: str
    args_schema: Mapping[str, Any] = field(
        default_factory=lambda: {"type": "object", "maxProperties": 0}
    )
    interpreter: tuple[str, ...] | None = None
    timeout_s: float | None = None  # defaults to what is left of the run's time limit


@dataclass
class HandlerContext:
    """What a handler may use: the network policy, a progress callback, the script list."""

    policy: NetPolicy = field(default_factory=NetPolicy)
    progress_callback: ProgressCallback | None = None
    scripts: Mapping[str, ScriptSpec] = field(default_factory=dict)
    deadline: float | None = None  # time.monotonic() by which the run is killed
    max_output_bytes: int = 65536

    def progress(self, num: float, den: float, msg: str = "") -> None:
        if self.progress_callback is not None:
            self.progress_callback(float(num), float(den), str(msg))


@dataclass(frozen=True)
class Plugin:
    kind: str
    run: Handler
    schema: Mapping[str, Any] | None
    source: str  # the entry point's value, for messages


_plugins_lock = threading.Lock()
_plugins_cache: dict[str, Plugin] | None = None


def builtin_kinds() -> list[str]:
    return sorted(BUILTIN_MODULES)


def runnable_kinds(allowed_kinds: frozenset[str] | None, has_scripts: bool) -> list[str]:
    """The kinds a worker can run, for its worker document.

    ``allowed_kinds=None`` means every built-in kind; plugins run only when named in
    ``allowed_kinds``. ``script`` is left out while the script allow-list is empty.
    """
    builtins = set(builtin_kinds())
    if allowed_kinds is None:
        kinds = builtins
    else:
        kinds = set(allowed_kinds) & (builtins | set(load_plugins()))
    if not has_scripts:
        kinds.discard("script")
    return sorted(kinds)


def load_plugins(refresh: bool = False) -> dict[str, Plugin]:
    """Kinds from the ``couchfarm.handlers`` entry points. Broken plugins are logged, skipped."""
    global _plugins_cache
    with _plugins_lock:
        if _plugins_cache is not None and not refresh:
            return dict(_plugins_cache)
        found: dict[str, Plugin] = {}
        try:
            entry_points = metadata.entry_points(group=ENTRY_POINT_GROUP)
        except Exception as exc:
            log.warning("could not list %s entry points: %s", ENTRY_POINT_GROUP, exc)
            return {}
        for ep in entry_points:
            plugin = _load_plugin(ep)
            if plugin is not None and plugin.kind not in found:
                found[plugin.kind] = plugin
        _plugins_cache = found
        return dict(found)


def clear_plugin_cache() -> None:
    global _plugins_cache
    with _plugins_lock:
        _plugins_cache = None


def _load_plugin(ep: Any) -> Plugin | None:
    from hub.protocol.model import KIND_PATTERN  # pydantic: imported only when plugins are present

    name = str(ep.name)
    if name in BUILTIN_MODULES:
        log.warning("plugin %s (%s) ignored: %r is a built-in kind", name, ep.value, name)
        return None
    if not re.fullmatch(KIND_PATTERN, name) or len(name) > 64:
        log.warning("plugin %r (%s) ignored: not a valid kind name", name, ep.value)
        return None
    try:
        obj = ep.load()
    except Exception as exc:
        log.warning("plugin %s (%s) failed to load: %s", name, ep.value, exc)
        return None
    if isinstance(obj, ModuleType):
        run = getattr(obj, "run", None)
        schema = getattr(obj, "INPUT_SCHEMA", None)
    else:
        run = obj
        schema = getattr(obj, "input_schema", None)
    if not callable(run):
        log.warning("plugin %s (%s) ignored: it has no callable run(input, ctx)", name, ep.value)
        return None
    if schema is not None:
        problems = schema_problems(schema)
        if problems:
            log.warning("plugin %s (%s) ignored: %s", name, ep.value, "; ".join(problems))
            return None
    return Plugin(kind=name, run=run, schema=schema, source=str(ep.value))


def plugin_schemas(plugins: Mapping[str, Plugin] | None = None) -> dict[str, dict]:
    """Input schemas for plugin kinds (``{"type": "object"}`` when a plugin has none)."""
    plugins = load_plugins() if plugins is None else plugins
    return {
        kind: dict(plugin.schema) if plugin.schema is not None else {"type": "object"}
        for kind, plugin in plugins.items()
    }


def get_handler(kind: str) -> Handler:
    """The ``run`` function for ``kind``: a built-in module's, or a plugin's."""
    module_name = BUILTIN_MODULES.get(kind)
    if module_name is not None:
        return importlib.import_module(module_name).run
    plugin = load_plugins().get(kind)
    if plugin is None:
        raise HandlerError(f"no handler for kind {kind!r} on this worker", permanent=True)
    return plugin.run


__all__ = [
    "BUILTIN_MODULES",
    "ENTRY_POINT_GROUP",
    "HandlerContext",
    "HandlerError",
    "Plugin",
    "ScriptSpec",
    "builtin_kinds",
    "clear_plugin_cache",
    "get_handler",
    "load_plugins",
    "network_errors",
    "plugin_schemas",
]
