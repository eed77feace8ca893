"""``script``: run a script from the worker owner's allow-list.

Only names in the local allow-list run (``Policy.scripts``: name -> ScriptSpec). The task's
``args`` must pass the script's declared JSON Schema. The script runs from an argv list,
never through a shell, so an argument such as ``; rm -rf /`` reaches it as literal text.
Each argument is one argv item ``--name=value``; the whole ``args`` object is also on
stdin as JSON. The script's stdout must be JSON: that is the output. It runs with a
timeout, a small environment (no worker credentials), and the run's memory cap.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import IO, Any

from desktop_worker.handlers import HandlerContext, HandlerError, ScriptSpec
from hub.protocol.kinds import schema_problems, validate_against

DEFAULT_TIMEOUT_S = 60.0
STDERR_TAIL = 2000
# Environment variables a script keeps; everything else (tokens, passwords) is dropped.
KEEP_ENV = (
    "PATH",
    "HOME",
    "LANG",
    "LANGUAGE",
    "TZ",
    "TMPDIR",
    "TEMP",
    "TMP",
    "SYSTEMROOT",
    "SYSTEMDRIVE",
    "WINDIR",
    "COMSPEC",
    "PATHEXT",
    "USERPROFILE",
    "APPDATA",
    "LOCALAPPDATA",
)


def run(input: dict[str, Any], ctx: HandlerContext) -> Any:
    name = input["name"]
    args = input.get("args") or {}
    spec = ctx.scripts.get(name)
    if spec is None:
        allowed = ", ".join(sorted(ctx.scripts)) or "none"
        raise HandlerError(
            f"script {name!r} is not in this worker's allow-list (allowed: {allowed})",
            permanent=True,
        )
    problems = schema_problems(spec.args_schema)
    if problems:
        raise HandlerError(
            f"script {name!r} is misconfigured on this worker: args_schema: {problems[0]}",
            permanent=True,
        )
    problems = validate_against(spec.args_schema, args, prefix="input.args")
    if problems:
        raise HandlerError(
            f"invalid arguments for script {name!r}: " + "; ".join(problems), permanent=True
        )
    argv = build_argv(spec, args)
    timeout = _timeout(spec, ctx)
    ctx.progress(0, 1, f"running {name}")
    cwd = str(Path(spec.path).resolve().parent)
    code, stdout, overflow, stderr = _run(argv, cwd, args, timeout, ctx.max_output_bytes, name)
    if overflow:
        raise HandlerError(
            f"script {name!r} printed more than {ctx.max_output_bytes} bytes (the output cap)",
            permanent=True,
        )
    if code != 0:
        tail = stderr.decode("utf-8", errors="replace").strip()[-500:]
        raise HandlerError(f"script {name!r} exited with code {code}: {tail or '(no stderr)'}")
    try:
        output = json.loads(stdout.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise HandlerError(
            f"script {name!r} printed something that is not JSON ({exc}); "
            "a script's stdout must be one JSON value",
            permanent=True,
        ) from exc
    ctx.progress(1, 1, "done")
    return output


def build_argv(spec: ScriptSpec, args: dict[str, Any]) -> list[str]:
    """The argv list: interpreter, script path, then ``--name=value`` per argument."""
    path = Path(spec.path)
    if not path.is_file():
        raise HandlerError(f"script file {spec.path} does not exist on this worker", True)
    if spec.interpreter is not None:
        prefix = list(spec.interpreter)
    elif path.suffix.lower() == ".py":
        prefix = [sys.executable]
    else:
        prefix = []
    argv = [*prefix, str(path.resolve())]
    for key in sorted(args):
        value = args[key]
        text = value if isinstance(value, str) else json.dumps(value, separators=(",", ":"))
        argv.append(f"--{key}={text}")
    return argv


def _timeout(spec: ScriptSpec, ctx: HandlerContext) -> float:
    timeout = spec.timeout_s if spec.timeout_s is not None else DEFAULT_TIMEOUT_S
    if ctx.deadline is not None:
        # Leave a moment to report the timeout before the runner kills everything.
        timeout = min(timeout, max(0.1, ctx.deadline - time.monotonic() - 0.5))
    return timeout


def _env(name: str) -> dict[str, str]:
    env = {key: os.environ[key] for key in KEEP_ENV if key in os.environ}
    env.update({k: v for k, v in os.environ.items() if k.startswith("LC_")})
    env["COUCHFARM_SCRIPT"] = name
    env["PYTHONIOENCODING"] = "utf-8"
    return env


def _run(
    argv: list[str], cwd: str, args: dict[str, Any], timeout: float, cap: int, name: str
) -> tuple[int, bytes, bool, bytes]:
    try:
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            cwd=cwd,
            env=_env(name),
            shell=False,
        )
    except OSError as exc:
        raise HandlerError(f"script {name!r} could not start: {exc}", permanent=True) from exc
    stdout = bytearray()
    stderr = bytearray()
    overflow = threading.Event()
    readers = [
        threading.Thread(target=_drain, args=(proc.stdout, stdout, cap, overflow, proc)),
        threading.Thread(target=_drain, args=(proc.stderr, stderr, None, None, proc)),
    ]
    for reader in readers:
        reader.daemon = True
        reader.start()
    try:
        assert proc.stdin is not None
        proc.stdin.write(json.dumps(args).encode("utf-8"))
        proc.stdin.close()
    except OSError:
        pass  # the script does not read stdin and has exited or closed it
    try:
        code = proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        raise HandlerError(f"script {name!r} did not finish within {timeout:.1f} s") from None
    finally:
        for reader in readers:
            reader.join(timeout=2)
    return code, bytes(stdout), overflow.is_set(), bytes(stderr)


def _drain(
    stream: IO[bytes],
    sink: bytearray,
    cap: int | None,
    overflow: threading.Event | None,
    proc: subprocess.Popen[bytes],
) -> None:
    try:
        while True:
            chunk = stream.read1(65536) if hasattr(stream, "read1") else stream.read(65536)
            if not chunk:
                return
            sink.extend(chunk)
            if cap is None:
                del sink[: max(0, len(sink) - STDERR_TAIL)]
            elif len(sink) > cap:
                del sink[cap:]
                if overflow is not None:
                    overflow.set()
                proc.kill()
                return
    except (OSError, ValueError):
        return
    finally:
        stream.close()
