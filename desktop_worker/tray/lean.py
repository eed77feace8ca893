"""Keep the idle tray app small. No Qt here: this runs before PySide6 is imported.

Measured on Linux with ``bench/tray_idle.py`` (RSS deltas per import, ``tracemalloc``,
``/proc/PID/smaps``): the idle tray app with the real engine took 117.8 MB before these
measures and 87.5 MB with them (median of three 60 s runs); 78.0 MB with the later cuts
listed in docs/TRAY.md, "Numbers". What was waste:

* **Shiboken's source scan (about 13 MB).** Once PySide6 is imported, shiboken's
  ``__feature__`` import hook runs ``inspect.getsource`` on every Python module imported
  after it (``shibokensupport.feature._mod_uses_pyside``), and ``linecache`` keeps every
  line of every file: 15 MB of strings for the engine's ~300 modules. Clearing the cache
  later gives back little (the strings are spread over pymalloc arenas that stay
  partly used), so :func:`prepare` imports the engine's stack *before* PySide6, where the
  hook cannot see it, and replaces the hook's source check with one that gives the
  same answer (does the module's source mention ``PySide6``?) without keeping the lines
  (:func:`quiet_shiboken_scan`; 2.8 MB less for the tray's own imports). :func:`trim`
  clears whatever ``linecache`` still holds.
* **JWT and cryptography (about 10 MB), charset_normalizer (about 3 MB).**
  ``ibm_cloud_sdk_core`` imports its IAM and container token managers at package
  import, and they ``import jwt``, which loads ``cryptography``'s Rust extension. The
  worker authenticates with ``BasicAuthenticator`` and never decodes a token, so
  :func:`defer_module` puts a stand-in for ``jwt`` in ``sys.modules`` that imports the
  real package on first use.
  Anyone who does use IAM still gets the real module, one attribute access later.
  ``charset_normalizer`` is deferred the same way: ``requests`` imports it at start but
  calls it only to guess the encoding of a body that names none. So are
  ``dateutil.parser`` (0.45 MB with six, ``dateutil.tz`` and relativedelta; the SDK core
  parses the dates of generated models with it) and ``more_itertools`` (0.45 MB; keyring's
  ``jaraco.functools`` uses it in one helper keyring never calls).
* **Imports on an engine thread.** The handlers (the engine lists their kinds in its
  worker document) imported at the first heartbeat, after PySide6 and on an engine
  thread, cost 0.8 MB more than in :data:`EARLY`. The runner is not imported early: the
  idle worker never needs it or multiprocessing.
* **malloc arenas.** glibc gives each thread that allocates its own arena (up to 8 per
  core) and keeps freed memory in them; the engine and the tray run about ten threads.
  Two arenas are plenty for a process that mostly waits (this is what
  ``MALLOC_ARENA_MAX=2`` does, set here with ``mallopt`` before any thread starts), and
  :func:`trim` hands freed heap back with ``malloc_trim``.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import logging
import sys
import threading
import types
from typing import Any

log = logging.getLogger("couchfarm.tray.lean")

# glibc's mallopt parameter numbers (malloc.h).
_M_ARENA_MAX = -8
ARENA_MAX = 2
# Modules nobody needs while the worker idles (see the module docstring): jwt (IAM tokens;
# the worker uses basic auth), charset_normalizer (requests guesses a response's encoding
# with it only when asked for ``.text`` without a charset), dateutil's parser (with six,
# dateutil.tz and relativedelta: ibm_cloud_sdk_core imports it to parse the dates of
# generated models, which hub/protocol/couch.py does not use) and more_itertools (keyring's
# jaraco.functools calls it in one helper keyring never uses). The second item is the
# distribution whose version the stand-in reports as ``__version__`` (requests checks it).
DEFERRED = (
    ("jwt", None),
    ("charset_normalizer", "charset-normalizer"),
    ("dateutil.parser", None),
    ("more_itertools", None),
)
# What the idle tray imports anyway, imported before PySide6 so that shiboken's hook
# neither scans nor caches it: the engine, the handlers (the engine lists the kinds it
# runs in its worker document), the keyring (the password at start) and psutil (battery
# checks). Not the runner: it (and multiprocessing) loads with the first run.
EARLY = (
    "desktop_worker.engine",
    "hub.protocol.couch",
    "desktop_worker.handlers",
    "keyring",
    "psutil",
)

_lock = threading.RLock()
_prepared = False


class DeferredModule(types.ModuleType):
    """Stands in ``sys.modules`` for a package until one of its attributes is read.

    ``import name`` finds the stand-in and is satisfied (it has a real ``__spec__``);
    the first attribute that is not the stand-in's own (``jwt.decode``) imports the
    real package, which then replaces the stand-in in ``sys.modules``.
    """

    def __getattr__(self, attr: str) -> Any:
        if attr.startswith("__") and attr.endswith("__"):
            # Introspection (inspect, shiboken's import hook, copy...) probes dunders
            # the stand-in lacks; that is not a use of the package.
            raise AttributeError(attr)
        return getattr(self._load(), attr)

    def _load(self) -> types.ModuleType:
        with _lock:
            real = self.__dict__.get("_deferred_real")
            if real is None:
                name = self.__name__
                if sys.modules.get(name) is self:
                    del sys.modules[name]
                real = importlib.import_module(name)
                self.__dict__["_deferred_real"] = real
                log.debug("deferred module %s imported on first use", name)
            return real


def defer_module(name: str, distribution: str | None = None) -> bool:
    """Put a :class:`DeferredModule` for ``name`` in ``sys.modules``. False when ``name``
    is already imported or not installed (then nothing changes). With ``distribution``,
    the stand-in's ``__version__`` is that distribution's version, read from its metadata
    (not by importing it)."""
    with _lock:
        if name in sys.modules:
            return False
        spec = importlib.util.find_spec(name)
        if spec is None:
            return False
        stand_in = DeferredModule(name)
        stand_in.__spec__ = spec
        stand_in.__file__ = spec.origin
        stand_in.__loader__ = spec.loader
        if spec.submodule_search_locations is not None:
            stand_in.__path__ = list(spec.submodule_search_locations)  # submodules import
        if distribution is not None:
            from importlib import metadata

            try:
                setattr(stand_in, "__version__", metadata.version(distribution))  # noqa: B010
            except metadata.PackageNotFoundError:
                return False
        sys.modules[name] = stand_in
        return True


def _uses_pyside(module: types.ModuleType) -> bool:
    """shiboken's question (does this module's source mention PySide6?), answered from the
    loader without filling ``linecache``. False when there is no source, as shiboken's
    own check answers for builtins and compiled modules."""
    loader = getattr(module, "__loader__", None)
    get_source = getattr(loader, "get_source", None)
    if get_source is None:
        return False
    try:
        source = get_source(module.__name__)
    except (ImportError, OSError, SyntaxError, UnicodeDecodeError, ValueError):
        return False
    return source is not None and "PySide6" in source


def quiet_shiboken_scan() -> bool:
    """Give shiboken's ``__feature__`` hook a source check that does not cache every line
    it reads (see the module docstring). False (and nothing changed) when this shiboken
    has no such check: the engine-first import order still holds the cost down."""
    try:
        import shiboken6  # noqa: F401  (makes shibokensupport importable)
        from shibokensupport import feature
    except ImportError:
        return False
    if not callable(getattr(feature, "_mod_uses_pyside", None)):
        return False
    feature._mod_uses_pyside = _uses_pyside
    return True


def limit_malloc_arenas(arenas: int = ARENA_MAX) -> bool:
    """glibc only: at most ``arenas`` malloc arenas. Takes effect for threads started
    after the call, so call it first thing."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        import ctypes

        return bool(ctypes.CDLL("libc.so.6").mallopt(_M_ARENA_MAX, int(arenas)))
    except (OSError, AttributeError):
        return False


def prepare() -> None:
    """Before PySide6 is imported: deferred modules, two malloc arenas, the engine.

    Idempotent. Importing the engine here is not extra work (the tray always runs it);
    it only moves the import to before shiboken's import hook exists.
    """
    global _prepared
    with _lock:
        if _prepared:
            return
        _prepared = True
    limit_malloc_arenas()
    for name, distribution in DEFERRED:
        defer_module(name, distribution)
    if "PySide6" not in sys.modules:
        for name in EARLY:
            with contextlib.suppress(ImportError):
                importlib.import_module(name)
    quiet_shiboken_scan()


def trim() -> None:
    """Give memory back after start-up or after the window closed.

    ``linecache`` holds what shiboken's hook read (see the module docstring); a
    traceback reads the lines again if it needs them.
    """
    import gc
    import linecache

    linecache.clearcache()
    gc.collect()
    if sys.platform.startswith("linux"):
        try:
            import ctypes

            ctypes.CDLL("libc.so.6").malloc_trim(0)
        except (OSError, AttributeError):
            pass


__all__ = [
    "DeferredModule",
    "defer_module",
    "limit_malloc_arenas",
    "prepare",
    "quiet_shiboken_scan",
    "trim",
]
