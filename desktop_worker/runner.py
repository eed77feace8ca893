"""Run one occurrence in a child process, with limits.

``start_run`` checks the kind and its input in this process, then starts a child that runs
the kind's handler: forked from multiprocessing's forkserver on POSIX (the runner and the
handlers preloaded there, so a run starts in milliseconds), started with ``spawn`` on
Windows and in frozen bundles (:mod:`desktop_worker.forkserver`). Either way each run is
its own fresh, killable process. The child reports progress and its outcome through a
pipe. Limits:

* **time**: the child is killed at ``Limits.timeout_s`` (a timer enforces it even when
  nobody polls); the outcome is a transient error.
* **memory**: on POSIX the child sets ``RLIMIT_AS`` to ``Limits.memory_mb`` before the
  handler runs (scripts it starts inherit the cap). Windows has no such limit here.
* **output**: the handler's output must be JSON of at most ``Limits.max_output_bytes``.
* **CPU**: with ``Limits.cpu_cap_percent`` below 100, a thread in this process keeps the
  run's share of one core at the cap (:class:`desktop_worker.throttle.CpuThrottle`). A
  suspended run still counts against its time limit.
* **bandwidth**: with ``Limits.bandwidth_bps`` above 0, the child's HTTP connections read
  and write through a token bucket of that many bytes a second
  (:class:`desktop_worker.netguard.ByteBucket`). ``dns.resolve`` and ``tcp.connect``
  move a few packets and are not throttled; a ``script`` is the owner's own program
  and is not either.

**Idle helpers.** On POSIX the first run starts the forkserver and its resource tracker;
once no run has been in progress for 2 minutes both are stopped, and the next run starts
them again (:mod:`desktop_worker.forkserver`).

The caps come from the worker's config (``cpu_cap_percent``, ``bandwidth_cap_kbps``):
:func:`limits_from_config` builds the Limits, and :func:`capped_start_run` wraps
``start_run`` so that whatever Limits a caller passes get the config's caps.

On POSIX the child leads its own process group and a kill takes the whole group, so a
script the handler started dies with it.

``run_inline`` runs the same checks and handler in this process (no kill, no memory cap):
for tests and for benchmarking ``demo.sleep`` with ``ms=0``.

Rate limiting: the run's primary target (a URL's host, a DNS name, a TCP host) takes a
token from a per-target bucket shared by every run started from this process; the child
waits out any delay. Requests inside one run (redirect hops) go through a per-run bucket.
"""

from __future__ import annotations

import json
import logging
import multiprocessing
import multiprocessing.connection
import os
import signal
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any, Literal
from urllib.parse import urlsplit

from desktop_worker import forkserver
from desktop_worker.forkserver import stop_idle_helpers
from desktop_worker.handlers import (
    HandlerContext,
    HandlerError,
    ScriptSpec,
    get_handler,
    plugin_schemas,
    runnable_kinds,
)
from desktop_worker.netguard import (
    ByteBucket,
    NetError,
    NetPolicy,
    RateLimiter,
    TargetRefused,
    default_resolver,
    normalize_host,
    static_resolver,
)
from desktop_worker.throttle import CpuThrottle
from hub.protocol.kinds import KIND_SCHEMAS, validate_input

log = logging.getLogger(__name__)

MAX_ERROR_CHARS = 2000  # RunResult.error's cap in hub.protocol.model
MAX_PROGRESS_MSG = 200  # Progress.msg's cap in hub.protocol.model
PROGRESS_INTERVAL_S = 0.05
MAX_RATE_WAIT_SHARE = 0.5  # a run may spend at most this share of its time limit waiting

__all__ = [
    "Limits",
    "Outcome",
    "Policy",
    "RunHandle",
    "ScriptSpec",
    "capped_start_run",
    "enabled_kinds",
    "limits_from_config",
    "reset_rate_limits",
    "run_inline",
    "start_run",
    "stop_idle_helpers",
]


@dataclass(frozen=True)
class Limits:
    timeout_s: float = 60.0
    memory_mb: int | None = 512
    max_output_bytes: int = 65536
    # The most of one core the run may use, in percent; 100 (or more) = no cap.
    cpu_cap_percent: int = 100
    # Bytes per second for this run's HTTP traffic; 0 = no cap.
    bandwidth_bps: int = 0


def limits_from_config(config: Any) -> Limits:
    """The run limits a :class:`desktop_worker.config.WorkerConfig` asks for.

    The bandwidth cap is for all runs together, so each of the ``slots`` runs that may
    be in progress at once gets an equal share.
    """
    return Limits(
        timeout_s=float(config.run_timeout_s),
        memory_mb=int(config.memory_mb) or None,
        max_output_bytes=int(config.max_output_bytes),
        **_caps(config),
    )


def _caps(config: Any) -> dict[str, int]:
    cpu = int(getattr(config, "cpu_cap_percent", 100) or 100)
    kib = int(getattr(config, "bandwidth_cap_kbps", 0) or 0)
    slots = max(1, int(getattr(config, "slots", 1) or 1))
    return {
        "cpu_cap_percent": max(1, min(cpu, 100)),
        "bandwidth_bps": max(1, kib * 1024 // slots) if kib > 0 else 0,
    }


def capped_start_run(config: Any) -> Callable[..., RunHandle]:
    """``start_run`` with the config's CPU and bandwidth caps applied to every run.

    For an engine that builds its own Limits without the caps: pass the result as the
    engine's ``start_run``.
    """
    caps = _caps(config)

    def start(kind: str, input: dict, limits: Limits, policy: Policy) -> RunHandle:
        return start_run(kind, input, replace(limits, **caps), policy)

    return start


@dataclass(frozen=True)
class Policy:
    """What this worker's owner allows. Travels to the child process, so keep it plain."""

    allow_private_network: bool = False
    allowed_kinds: frozenset[str] | None = None  # None = all built-ins
    scripts: Mapping[str, ScriptSpec] = field(default_factory=dict, hash=False)
    rate_per_target: float = 1.0  # requests per second per target host; <= 0 turns it off
    rate_burst: int = 5
    max_response_bytes: int = 1048576
    max_redirects: int = 5
    # Static name -> addresses map the child consults before DNS (tests; hosts-file style).
    resolver_hosts: Mapping[str, list[str]] = field(default_factory=dict, hash=False)
    # Networks (CIDR) the owner allows although they are not public, e.g. ("192.168.1.10/32",).
    allowed_networks: tuple[str, ...] = ()


@dataclass(frozen=True)
class Outcome:
    status: Literal["ok", "error"]
    output: Any = None
    error: str | None = None
    permanent: bool = False
    duration_s: float = 0.0


# ------------------------------------------------------------------ checks before a run


def enabled_kinds(policy: Policy) -> list[str]:
    """The kinds this worker can run under ``policy``, for its worker document."""
    return runnable_kinds(policy.allowed_kinds, bool(policy.scripts))


def _is_allowed(kind: str, policy: Policy) -> bool:
    if policy.allowed_kinds is None:
        return kind in KIND_SCHEMAS
    return kind in policy.allowed_kinds


def _refusal(kind: str, input: object, policy: Policy) -> str | None:
    """Why this run must not start (a permanent failure), or None."""
    builtin = kind in KIND_SCHEMAS
    schemas = {} if builtin else plugin_schemas()
    if not builtin and kind not in schemas:
        known = ", ".join(sorted({*KIND_SCHEMAS, *schemas}))
        return f"unknown kind {kind!r}; known kinds on this worker: {known}"
    if not _is_allowed(kind, policy):
        allowed = ", ".join(enabled_kinds(policy)) or "none"
        return f"kind {kind!r} is not enabled on this worker (enabled: {allowed})"
    problems = validate_input(kind, input, extra_schemas=schemas)
    if problems:
        return "invalid input: " + "; ".join(problems)
    return None


def _target_host(kind: str, input: Mapping[str, Any]) -> str | None:
    try:
        if kind in ("http.check", "http.fetch"):
            host = urlsplit(str(input["url"])).hostname
        elif kind == "dns.resolve":
            host = str(input["name"])
        elif kind == "tcp.connect":
            host = str(input["host"])
        else:
            return None
    except (KeyError, ValueError):
        return None
    return normalize_host(host) if host else None


_limiters_lock = threading.Lock()
_limiters: dict[tuple[float, int], RateLimiter] = {}


def _shared_limiter(policy: Policy) -> RateLimiter:
    key = (float(policy.rate_per_target), int(policy.rate_burst))
    with _limiters_lock:
        limiter = _limiters.get(key)
        if limiter is None:
            limiter = _limiters[key] = RateLimiter(*key)
        return limiter


def reset_rate_limits() -> None:
    """Forget every per-target bucket (tests)."""
    with _limiters_lock:
        _limiters.clear()


def _reserve_rate(kind: str, input: Mapping[str, Any], limits: Limits, policy: Policy) -> float:
    """Seconds the run must wait for its target's rate limit. Raises HandlerError if too long."""
    host = _target_host(kind, input)
    if host is None or policy.rate_per_target <= 0:
        return 0.0
    limiter = _shared_limiter(policy)
    delay = limiter.reserve(host)
    if delay > limits.timeout_s * MAX_RATE_WAIT_SHARE:
        limiter.give_back(host)
        raise HandlerError(
            f"rate limit for {host}: this worker sends at most {policy.rate_per_target:g} "
            f"request(s) per second to one target (burst {policy.rate_burst}); "
            f"the next slot is {delay:.1f} s away. Try again later.",
            permanent=False,
        )
    return delay


def _prepare(kind: str, input: Any, limits: Limits, policy: Policy) -> tuple[float, Outcome | None]:
    """(rate-limit delay, None) when the run may start, else (0, the failure outcome)."""
    refusal = _refusal(kind, input, policy)
    if refusal is not None:
        return 0.0, _error(refusal, permanent=True)
    try:
        return _reserve_rate(kind, input, limits, policy), None
    except HandlerError as exc:
        return 0.0, _error(exc.message, permanent=exc.permanent)


def _error(message: str, permanent: bool, duration_s: float = 0.0) -> Outcome:
    if len(message) > MAX_ERROR_CHARS:
        message = message[: MAX_ERROR_CHARS - 3] + "..."
    return Outcome(status="error", error=message, permanent=permanent, duration_s=duration_s)


# ------------------------------------------------------------------ the run itself


def _net_policy(policy: Policy, bandwidth_bps: int = 0) -> NetPolicy:
    resolver = (
        static_resolver(policy.resolver_hosts, fallback=default_resolver)
        if policy.resolver_hosts
        else default_resolver
    )
    return NetPolicy(
        allow_private_network=policy.allow_private_network,
        resolver=resolver,
        rate_limiter=RateLimiter(policy.rate_per_target, policy.rate_burst),
        max_response_bytes=policy.max_response_bytes,
        max_redirects=policy.max_redirects,
        allowed_networks=tuple(policy.allowed_networks),
        bandwidth=ByteBucket(bandwidth_bps) if bandwidth_bps > 0 else None,
    )


# (status, output as JSON text, error, permanent)
_Result = tuple[str, str | None, str | None, bool]


def _execute(
    kind: str,
    input: dict[str, Any],
    limits: Limits,
    policy: Policy,
    progress: Callable[[float, float, str], None],
    deadline: float,
    delay: float,
) -> _Result:
    ctx = HandlerContext(
        policy=_net_policy(policy, limits.bandwidth_bps),
        progress_callback=progress,
        scripts=policy.scripts,
        deadline=deadline,
        max_output_bytes=limits.max_output_bytes,
    )
    try:
        if delay > 0:
            progress(0, 0, f"waiting {delay:.1f} s for the target's rate limit")
            time.sleep(delay)
        handler = get_handler(kind)
        output = handler(json.loads(json.dumps(input)), ctx)
    except HandlerError as exc:
        return "error", None, exc.message, exc.permanent
    except TargetRefused as exc:
        return "error", None, exc.reason, True
    except NetError as exc:
        return "error", None, str(exc), False
    except MemoryError:
        return "error", None, f"{kind} ran out of memory (cap {limits.memory_mb} MB)", False
    except Exception as exc:
        log.exception("handler for %s failed", kind)
        return "error", None, f"{kind} failed: {type(exc).__name__}: {exc}", False
    try:
        text = json.dumps(output, allow_nan=False, ensure_ascii=False, separators=(",", ":"))
    except (TypeError, ValueError) as exc:
        return "error", None, f"{kind} returned output that is not JSON: {exc}", True
    try:
        size = len(text.encode("utf-8"))
    except UnicodeEncodeError:  # lone surrogates from a handler: not storable as they are
        text = "".join("\ufffd" if "\ud800" <= ch <= "\udfff" else ch for ch in text)
        size = len(text.encode("utf-8"))
    if size > limits.max_output_bytes:
        return (
            "error",
            None,
            f"{kind} output is {size} bytes of JSON, over this worker's cap of "
            f"{limits.max_output_bytes} bytes",
            True,
        )
    return "ok", text, None, False


def _outcome(result: _Result, duration_s: float) -> Outcome:
    status, text, error, permanent = result
    if status == "ok":
        output = json.loads(text) if text is not None else None
        return Outcome(status="ok", output=output, duration_s=duration_s)
    return _error(error or "failed", permanent, duration_s)


def run_inline(kind: str, input: dict, limits: Limits, policy: Policy) -> Outcome:
    """Run in this process: same checks, same output cap; no hard timeout, no memory cap."""
    started = time.monotonic()
    delay, failed = _prepare(kind, input, limits, policy)
    if failed is not None:
        return failed
    result = _execute(
        kind,
        input,
        limits,
        policy,
        lambda num, den, msg: None,
        started + limits.timeout_s,
        delay,
    )
    return _outcome(result, time.monotonic() - started)


# ------------------------------------------------------------------ the child process


def _child_main(
    conn: multiprocessing.connection.Connection,
    kind: str,
    input: dict[str, Any],
    limits: Limits,
    policy: Policy,
    deadline: float,
    delay: float,
) -> None:
    if os.name == "posix":
        try:
            os.setpgrp()  # lead a process group, so one kill takes scripts along
        except OSError:
            pass
        _cap_memory(limits.memory_mb)

    last_sent = 0.0
    pending: tuple[float, float, str] | None = None

    def send_progress(num: float, den: float, msg: str) -> None:
        nonlocal last_sent, pending
        pending = (float(num), float(den), str(msg)[:MAX_PROGRESS_MSG])
        now = time.monotonic()
        if now - last_sent >= PROGRESS_INTERVAL_S:
            conn.send(("progress", *pending))
            last_sent, pending = now, None

    status, text, error, permanent = _execute(
        kind, input, limits, policy, send_progress, deadline, delay
    )
    if error is not None and len(error) > MAX_ERROR_CHARS:
        error = error[: MAX_ERROR_CHARS - 3] + "..."
    result = (status, text, error, permanent)
    if pending is not None:
        conn.send(("progress", *pending))
    conn.send(("done", result))
    conn.close()


def _cap_memory(memory_mb: int | None) -> None:
    if not memory_mb:
        return
    try:
        import resource
    except ImportError:
        return
    try:
        cap = int(memory_mb) * 1024 * 1024
        _soft, hard = resource.getrlimit(resource.RLIMIT_AS)
        if hard != resource.RLIM_INFINITY:
            cap = min(cap, hard)
        resource.setrlimit(resource.RLIMIT_AS, (cap, hard))
    except (ValueError, OSError, AttributeError):
        pass  # e.g. macOS refuses RLIMIT_AS: run without the cap


def _plain_policy(policy: Policy) -> Policy:
    """``policy`` with plain dicts, so it pickles across the process boundary."""
    scripts = {
        str(name): ScriptSpec(
            path=str(spec.path),
            args_schema=json.loads(json.dumps(dict(spec.args_schema))),
            interpreter=tuple(spec.interpreter) if spec.interpreter is not None else None,
            timeout_s=spec.timeout_s,
        )
        for name, spec in policy.scripts.items()
    }
    hosts = {str(name): [str(ip) for ip in ips] for name, ips in policy.resolver_hosts.items()}
    kinds = frozenset(policy.allowed_kinds) if policy.allowed_kinds is not None else None
    return Policy(
        allow_private_network=policy.allow_private_network,
        allowed_kinds=kinds,
        scripts=scripts,
        rate_per_target=policy.rate_per_target,
        rate_burst=policy.rate_burst,
        max_response_bytes=policy.max_response_bytes,
        max_redirects=policy.max_redirects,
        resolver_hosts=hosts,
        allowed_networks=tuple(policy.allowed_networks),
    )


class RunHandle:
    """One run in a child process. Poll it; cancel it; it kills itself at the time limit."""

    def __init__(
        self,
        kind: str,
        limits: Limits,
        started: float,
        process: Any = None,
        conn: multiprocessing.connection.Connection | None = None,
        outcome: Outcome | None = None,
    ) -> None:
        self.kind = kind
        self.limits = limits
        self.progress: tuple[float, float, str] | None = None
        self._started = started
        self._deadline = started + limits.timeout_s
        self._process = process
        self._conn = conn
        self._outcome = outcome
        self._lock = threading.RLock()
        self._timer: threading.Timer | None = None
        self.throttle: CpuThrottle | None = None
        self._counted = outcome is None and process is not None  # in forkserver's run count
        if outcome is None and process is not None:
            self._timer = threading.Timer(
                max(0.0, self._deadline - time.monotonic()), self._on_deadline
            )
            self._timer.daemon = True
            self._timer.start()
            if limits.cpu_cap_percent < 100 and getattr(process, "pid", None):
                self.throttle = CpuThrottle(process.pid, limits.cpu_cap_percent).start()

    @property
    def pid(self) -> int | None:
        return getattr(self._process, "pid", None)

    def poll(self) -> Outcome | None:
        """The outcome once the run is over; None while it runs. Never blocks."""
        with self._lock:
            if self._outcome is None:
                self._drain()
            if self._outcome is None and time.monotonic() >= self._deadline:
                self._time_out()
            return self._outcome

    def wait(self, timeout: float | None = None) -> Outcome | None:
        """Block until the run is over (or ``timeout`` seconds pass: then None)."""
        end = None if timeout is None else time.monotonic() + timeout
        while True:
            outcome = self.poll()
            if outcome is not None:
                return outcome
            now = time.monotonic()
            if end is not None and now >= end:
                return None
            pause = self._deadline - now
            if end is not None:
                pause = min(pause, end - now)
            pause = min(max(pause, 0.0), 0.5)
            conn = self._conn
            try:
                if conn is not None and not conn.closed:
                    multiprocessing.connection.wait([conn], timeout=pause)
                else:
                    time.sleep(pause)
            except (OSError, ValueError):
                time.sleep(min(pause, 0.01))

    def cancel(self, reason: str = "cancelled") -> None:
        """Kill the run now. poll() then returns an error outcome carrying ``reason``."""
        with self._lock:
            if self._outcome is None:
                self._finish(_error(reason, permanent=False, duration_s=self._elapsed()))

    # -------------------------------------------------------------- internals

    def _elapsed(self) -> float:
        return time.monotonic() - self._started

    def _on_deadline(self) -> None:
        with self._lock:
            if self._outcome is None:
                self._drain()
            if self._outcome is None:
                self._time_out()

    def _time_out(self) -> None:
        self._finish(
            _error(
                f"timed out after {self.limits.timeout_s:g} s (this worker's time limit "
                "for a run); the run was killed",
                permanent=False,
                duration_s=self._elapsed(),
            )
        )

    def _drain(self) -> None:
        conn = self._conn
        if conn is None or conn.closed:
            return
        try:
            while conn.poll(0):
                message = conn.recv()
                if message[0] == "progress":
                    self.progress = (message[1], message[2], message[3])
                elif message[0] == "done":
                    self._finish(_outcome(message[1], self._elapsed()))
                    return
        except (EOFError, OSError):
            self._finish(None)

    def _finish(self, outcome: Outcome | None) -> None:
        """Record the outcome, kill what is left of the child's group, reap the child."""
        if self.throttle is not None:
            self.throttle.stop()  # before the reap below: it signals the child by pid
        self._kill()
        process = self._process
        code = None
        if process is not None:
            process.join(timeout=5)
            code = process.exitcode
        if outcome is None:  # the child vanished without a word
            memory = f" or ran out of memory (cap {self.limits.memory_mb} MB)"
            outcome = _error(
                f"the run's process ended without a result (exit code {code}); "
                f"it crashed{memory if self.limits.memory_mb else ''}",
                permanent=False,
                duration_s=self._elapsed(),
            )
        self._outcome = outcome
        if self._conn is not None:
            self._conn.close()
        if self._timer is not None:
            self._timer.cancel()
        if self._counted:
            self._counted = False
            forkserver.run_ended()

    def _kill(self) -> None:
        # The child is not reaped yet (we reap only after this), so its pid, and the
        # process group it leads, cannot belong to anyone else.
        process = self._process
        if process is None or process.pid is None:
            return
        if os.name == "posix":
            try:
                os.killpg(process.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError, OSError):
                pass
        try:
            process.kill()
        except (OSError, ValueError, AttributeError):
            pass


def start_run(kind: str, input: dict, limits: Limits, policy: Policy) -> RunHandle:
    """Check the run and start it in a child process. Never blocks on the run itself."""
    started = time.monotonic()
    delay, failed = _prepare(kind, input, limits, policy)
    if failed is not None:
        return RunHandle(kind, limits, started, outcome=failed)
    context = forkserver.context()
    forkserver.run_began()
    try:
        reader, writer = context.Pipe(duplex=False)
    except OSError as exc:
        forkserver.run_ended()
        return RunHandle(
            kind, limits, started, outcome=_error(f"could not start the run: {exc}", False)
        )
    process = context.Process(
        target=_child_main,
        args=(
            writer,
            kind,
            input,
            limits,
            _plain_policy(policy),
            started + limits.timeout_s,
            delay,
        ),
        name=f"couchfarm-run-{kind}",
        daemon=True,
    )
    try:
        process.start()
    except Exception as exc:
        reader.close()
        writer.close()
        forkserver.run_ended()
        return RunHandle(
            kind,
            limits,
            started,
            outcome=_error(f"could not start the run's process: {exc}", permanent=False),
        )
    writer.close()
    return RunHandle(kind, limits, started, process=process, conn=reader)
