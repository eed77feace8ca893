"""``make package``: build the worker bundle for this OS, self-test it, report its size.

    .venv/bin/python installer/build.py [--no-self-test] [--archive]

1. runs PyInstaller on ``installer/couchfarm-worker.spec`` (``installer/dist/`` out,
   ``installer/build/`` as work path);
2. on Linux, checks that every library in the bundle finds its dependencies in the bundle
   or on this system (``ldd``);
3. runs ``desktop-worker-cli --self-test`` from the bundle with ``QT_QPA_PLATFORM=offscreen``;
4. prints the folder size against the budget (110 MB on Linux) and the build time, and
   writes them to ``installer/dist/build-report.json``.

``--archive`` also packs the folder (``.tar.gz`` on Linux/macOS, ``.zip`` on Windows) and
reports the archive's size. Exit code 0 when everything passed, 1 otherwise.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
SPEC = HERE / "couchfarm-worker.spec"
DIST = HERE / "dist"
WORK = HERE / "build"
BUNDLE = DIST / "couchfarm-worker"
MB = 1024 * 1024
BUDGET_MB = {"linux": 110}


def folder_bytes(folder: Path) -> int:
    """Apparent size of every file (symbolic links count as nothing)."""
    total = 0
    for path in folder.rglob("*"):
        if path.is_file() and not path.is_symlink():
            total += path.stat().st_size
    return total


def cli_executable() -> Path:
    name = "desktop-worker-cli.exe" if sys.platform == "win32" else "desktop-worker-cli"
    return BUNDLE / name


def build() -> float:
    started = time.monotonic()
    subprocess.run(
        [
            sys.executable,
            "-m",
            "PyInstaller",
            "--noconfirm",
            "--log-level",
            "WARN",
            "--distpath",
            str(DIST),
            "--workpath",
            str(WORK),
            str(SPEC),
        ],
        cwd=ROOT,
        check=True,
    )
    return time.monotonic() - started


def missing_libraries() -> list[str]:
    """Linux: '<file>: <library>' for each dependency neither the bundle nor the system has."""
    if not sys.platform.startswith("linux") or shutil.which("ldd") is None:
        return []
    internal = BUNDLE / "_internal"
    env = {
        **os.environ,
        "LD_LIBRARY_PATH": os.pathsep.join([str(internal), str(internal / "PySide6/Qt/lib")]),
    }
    problems = []
    for path in sorted(internal.rglob("*.so*")):
        if path.is_symlink() or not path.is_file():
            continue
        out = subprocess.run(
            ["ldd", str(path)], capture_output=True, text=True, env=env, check=False
        ).stdout
        for line in out.splitlines():
            if "not found" in line:
                problems.append(f"{path.relative_to(BUNDLE)}: {line.split()[0]}")
    return problems


def self_test() -> tuple[int, str, float]:
    env = {**os.environ, "QT_QPA_PLATFORM": "offscreen"}
    started = time.monotonic()
    done = subprocess.run(
        [str(cli_executable()), "--self-test"],
        capture_output=True,
        text=True,
        env=env,
        timeout=180,
        check=False,
    )
    took = time.monotonic() - started
    lines = [line for line in done.stdout.splitlines() if line.startswith("self-test")]
    verdict = lines[-1] if lines else f"no verdict (stderr: {done.stderr.strip()[-500:]})"
    return done.returncode, verdict, took


def archive() -> Path:
    from hub.protocol.version import __version__

    system = {"win32": "windows", "darwin": "macos"}.get(sys.platform, "linux")
    base = DIST / f"couchfarm-worker-{__version__}-{system}-{platform.machine().lower()}"
    fmt = "zip" if sys.platform == "win32" else "gztar"
    return Path(shutil.make_archive(str(base), fmt, root_dir=DIST, base_dir=BUNDLE.name))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Build and check the worker bundle.")
    parser.add_argument("--no-self-test", action="store_true")
    parser.add_argument("--archive", action="store_true", help="also pack the folder")
    args = parser.parse_args(argv)
    sys.path.insert(0, str(ROOT))

    build_s = build()
    ok = True
    report: dict[str, object] = {"os": sys.platform, "build_s": round(build_s, 1)}

    missing = missing_libraries()
    if missing:
        ok = False
        print("missing libraries:\n  " + "\n  ".join(missing))
    report["missing_libraries"] = missing

    if not args.no_self_test:
        code, verdict, took = self_test()
        print(f"{verdict}  ({took:.1f} s)")
        report.update(self_test=verdict, self_test_s=round(took, 1))
        ok = ok and code == 0

    size = folder_bytes(BUNDLE)
    budget = BUDGET_MB.get("linux" if sys.platform.startswith("linux") else sys.platform)
    verdict = ""
    if budget is not None:
        verdict = f" (budget {budget} MB: {'ok' if size <= budget * MB else 'OVER'})"
        ok = ok and size <= budget * MB
    print(f"bundle: {BUNDLE.relative_to(ROOT)} {size / MB:.1f} MB{verdict}")
    print(f"build time: {build_s:.0f} s")
    report.update(bundle_mb=round(size / MB, 1), budget_mb=budget)

    if args.archive:
        packed = archive()
        print(f"archive: {packed.relative_to(ROOT)} {packed.stat().st_size / MB:.1f} MB")
        report["archive_mb"] = round(packed.stat().st_size / MB, 1)

    (DIST / "build-report.json").write_text(json.dumps(report, indent=2) + "\n")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
