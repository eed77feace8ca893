"""Issue 7: packaging and versioning (the PyInstaller build itself runs in `make package`).

- ``desktop-worker --self-test`` from source, and its verdict on a failure;
- the spec (run with stand-ins for PyInstaller's build classes): what it excludes, what it
  adds, and what its Qt filter keeps;
- the Inno Setup script and the Windows workflow, read as text and YAML;
- the trimmed ICU data library (installer/icu_trim.py), the SSL runtime hook, the icon;
- versioning: ``hub init`` writes ``hub:policy``; a worker older than its minimum refuses
  to claim, says why, and the reason reaches the tray.
"""

from __future__ import annotations

import ast
import configparser
import os
import re
import runpy
import secrets
import shutil
import struct
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml

from desktop_worker import cli, selftest
from desktop_worker.config import WorkerConfig
from desktop_worker.engine import Engine, EngineEvent
from hub import provision
from hub.protocol import states
from hub.protocol.couch import Couch
from hub.protocol.model import Task, task_id, worker_id
from hub.protocol.timefmt import to_wire
from hub.protocol.version import (
    MIN_WORKER_VERSION,
    POLICY_DOC_ID,
    __version__,
    at_least,
    worker_too_old,
)

ROOT = Path(__file__).resolve().parent.parent
INSTALLER = ROOT / "installer"
SPEC = INSTALLER / "couchfarm-worker.spec"
ISS = INSTALLER / "couchfarm-worker.iss"
WORKFLOW = ROOT / ".github" / "workflows" / "windows.yml"
OLD = "0.0.9"
REFUSAL = (
    f"this worker (v{OLD}) is older than the hub's minimum v{MIN_WORKER_VERSION}; "
    "please update Couchfarm"
)


# ================================================================== self-test


def test_self_test_passes_from_source() -> None:
    env = {**os.environ, "QT_QPA_PLATFORM": "offscreen"}
    done = subprocess.run(
        [sys.executable, "-m", "desktop_worker.cli", "--self-test"],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=120,
        check=False,
    )
    line = done.stdout.strip().splitlines()[-1]
    assert done.returncode == 0, (line, done.stderr[-2000:])
    assert re.fullmatch(
        rf"self-test ok: v{re.escape(__version__)} qt=offscreen engine handlers=6 "
        r"child-run tls-cas=\d+ keyring=\w+",
        line,
    ), line
    assert int(re.search(r"tls-cas=(\d+)", line).group(1)) >= 100  # type: ignore[union-attr]


def test_a_failed_check_gives_a_failed_verdict_and_the_others_still_run() -> None:
    ran = []

    def broken() -> str:
        raise selftest.CheckFailed("qt: the 'xcb' platform plugin is not in the bundle")

    def crashing() -> str:
        raise RuntimeError("boom")

    def fine() -> str:
        ran.append("fine")
        return "fine"

    ok, line = selftest.run_checks([("qt", broken), ("engine", crashing), ("x", fine)])
    assert not ok
    assert line == (
        "self-test FAILED: qt: the 'xcb' platform plugin is not in the bundle; "
        "engine: RuntimeError: boom"
    )
    assert ran == ["fine"]


def test_a_frozen_bundle_without_its_version_fails(monkeypatch: pytest.MonkeyPatch) -> None:
    import hub.protocol.version

    monkeypatch.setattr(sys, "frozen", True, raising=False)
    monkeypatch.setattr(hub.protocol.version, "__version__", "0.0.0+source")
    with pytest.raises(selftest.CheckFailed, match="copy_metadata"):
        selftest.check_version()


def test_without_stdout_the_verdict_goes_to_a_file(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    out = tmp_path / "sub" / "self-test.txt"
    monkeypatch.setattr(sys, "stdout", None)
    monkeypatch.setenv(selftest.OUT_ENV, str(out))
    selftest.report("self-test ok: v1 qt=windows")
    assert out.read_text() == "self-test ok: v1 qt=windows\n"


def test_cli_self_test_flag_calls_freeze_support_first(monkeypatch: pytest.MonkeyPatch) -> None:
    import multiprocessing

    calls: list[str] = []
    monkeypatch.setattr(multiprocessing, "freeze_support", lambda: calls.append("freeze"))
    monkeypatch.setattr(selftest, "main", lambda: calls.append("selftest") or 7)
    monkeypatch.setattr(sys, "frozen", True, raising=False)
    assert cli.main(["--self-test"]) == 7
    assert calls == ["freeze", "selftest"]
    calls.clear()
    monkeypatch.setattr(sys, "frozen", False)
    assert cli.main(["--self-test"]) == 7
    assert calls == ["selftest"]  # not frozen: multiprocessing is not even imported


def test_the_worker_entry_point_does_not_import_multiprocessing() -> None:
    probe = "import sys, desktop_worker.cli; print('multiprocessing' in sys.modules)"
    run = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                         timeout=60, check=True)  # fmt: skip
    assert run.stdout.strip() == "False"


# ================================================================== the spec


def _fake_pyinstaller(tmp_path: Path, toc: list[tuple[str, str, str]]) -> dict[str, Any]:
    """Stand-ins for Analysis, PYZ, EXE and COLLECT that record what the spec asks for."""
    made: dict[str, Any] = {"exe": []}

    class Analysis:
        def __init__(self, scripts: list[str], **kwargs: Any) -> None:
            made["analysis"] = kwargs
            made["scripts"] = scripts
            self.scripts, self.pure = scripts, []
            self.binaries = [e for e in toc if e[2] in ("BINARY", "EXTENSION", "SYMLINK")]
            self.datas = [e for e in toc if e[2] == "DATA"]
            made["a"] = self

    def pyz(*_args: Any) -> str:
        return "pyz"

    def exe(*_args: Any, **kwargs: Any) -> dict[str, Any]:
        made["exe"].append(kwargs)
        return kwargs

    def collect(*args: Any, **kwargs: Any) -> None:
        made["collect"] = kwargs
        (tmp_path / "dist" / kwargs["name"]).mkdir(parents=True, exist_ok=True)

    made["namespace"] = {
        "SPECPATH": str(INSTALLER),
        "DISTPATH": str(tmp_path / "dist"),
        "workpath": str(tmp_path / "build"),
        "Analysis": Analysis,
        "PYZ": pyz,
        "EXE": exe,
        "COLLECT": collect,
        "__name__": "__main__",
    }
    return made


@pytest.fixture(scope="module")
def spec_run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The spec run on Linux with a made-up Analysis result (real Qt files as sources)."""
    pytest.importorskip("PyInstaller", reason="pip install -e '.[package]'")
    if not sys.platform.startswith("linux"):
        pytest.skip("the filter's library pruning is exercised on Linux")
    tmp_path = tmp_path_factory.mktemp("spec")
    import PySide6

    qt = Path(PySide6.__file__).parent / "Qt"
    real = str(qt / "lib" / "libQt6Core.so.6")
    plugins = "PySide6/Qt/plugins/"
    binaries = [
        (plugins + "platforms/libqxcb.so", str(qt / "plugins/platforms/libqxcb.so")),
        (plugins + "platforms/libqoffscreen.so", real),
        (plugins + "platforms/libqwayland.so", real),
        (plugins + "platforms/libqeglfs.so", real),
        (plugins + "platformthemes/libqgtk3.so", real),
        (plugins + "imageformats/libqjpeg.so", real),
        (plugins + "tls/libqopensslbackend.so", real),
        (plugins + "platforminputcontexts/libcomposeplatforminputcontextplugin.so", real),
        ("PySide6/Qt/lib/libQt6Core.so.6", real),
        ("PySide6/Qt/lib/libQt6Quick.so.6", real),
        ("PySide6/Qt/lib/libQt6Qml.so.6", real),
        ("PySide6/Qt/lib/libQt6WaylandClient.so.6", real),
        ("PySide6/Qt/lib/libQt6Pdf.so.6", real),
        ("libgtk-3.so.0", real),  # nothing kept links to it
        ("libstdc++.so.6", real),  # every desktop has it
    ]
    toc = [(dest, src, "BINARY") for dest, src in binaries] + [
        ("libQt6Quick.so.6", "PySide6/Qt/lib/libQt6Quick.so.6", "SYMLINK"),
        ("libQt6Core.so.6", "PySide6/Qt/lib/libQt6Core.so.6", "SYMLINK"),
        ("PySide6/Qt/translations/qtbase_de.qm", __file__, "DATA"),
        ("PySide6/Qt/qml/QtQuick/qmldir", __file__, "DATA"),
        ("certifi/cacert.pem", __file__, "DATA"),
    ]
    made = _fake_pyinstaller(tmp_path, toc)
    old = os.environ.get("COUCHFARM_FULL_ICU")
    os.environ["COUCHFARM_FULL_ICU"] = "1"
    try:
        exec(compile(SPEC.read_text(), str(SPEC), "exec"), made["namespace"])
    finally:
        if old is None:
            os.environ.pop("COUCHFARM_FULL_ICU", None)
        else:
            os.environ["COUCHFARM_FULL_ICU"] = old
    made["dist"] = tmp_path / "dist"
    return made


def test_spec_leaves_out_the_portal_and_heavy_qt(spec_run: dict[str, Any]) -> None:
    excludes = set(spec_run["analysis"]["excludes"])
    for name in [
        "hub.portal",
        "fastapi",
        "uvicorn",
        "starlette",
        "jinja2",
        "apscheduler",
        "hub.schedules",
        "hub.provision",
        "hub.dispatch",
        "hub.audit",
        "PySide6.QtQml",
        "PySide6.QtQuick",
        "PySide6.QtWebEngineCore",
        "PySide6.Qt3DCore",
        "PySide6.QtMultimedia",
        "PySide6.QtPdf",
        "PySide6.QtOpenGL",
    ]:
        assert name in excludes, name
    for needed in ["PySide6.QtCore", "PySide6.QtGui", "PySide6.QtWidgets", "PySide6.QtNetwork"]:
        assert needed not in excludes


def test_spec_adds_handlers_hub_modules_keyring_and_metadata(spec_run: dict[str, Any]) -> None:
    from desktop_worker.handlers import BUILTIN_MODULES

    hidden = set(spec_run["analysis"]["hiddenimports"])
    assert set(BUILTIN_MODULES.values()) <= hidden
    for name in [
        "hub.protocol.couch",
        "hub.protocol.model",
        "hub.protocol.states",
        "hub.protocol.kinds",
        "hub.protocol.timefmt",
        "hub.protocol.version",
        "hub.protocol.names",
        "hub.protocol.board",
        "desktop_worker.tray.window",
        "desktop_worker.tray.wizard",
        "desktop_worker.selftest",
        "keyring.backends.SecretService",
        "certifi",
        "ssl",
    ]:
        assert name in hidden, name
    assert not any("screenshots" in name for name in hidden)
    # nothing of the hub but its protocol core
    assert not [n for n in hidden if n.startswith("hub.") and not n.startswith("hub.protocol")]
    datas = [Path(dest).name for _src, dest in spec_run["analysis"]["datas"]]
    assert any(re.fullmatch(r"couchfarm(-[\d.]+)?\.(dist|egg)-info", name) for name in datas)
    assert all(Path(src).is_absolute() for src, _dest in spec_run["analysis"]["datas"])
    assert any(name.startswith("keyring-") for name in datas)
    hooks = spec_run["analysis"]["runtime_hooks"]
    assert [Path(h).name for h in hooks] == ["rthook_ssl.py"]


def test_spec_qt_filter_keeps_only_what_the_tray_uses(spec_run: dict[str, Any]) -> None:
    a = spec_run["a"]
    kept = {dest for dest, _src, _t in a.binaries + a.datas}
    assert kept == {
        "PySide6/Qt/plugins/platforms/libqxcb.so",
        "PySide6/Qt/plugins/platforms/libqoffscreen.so",
        "PySide6/Qt/plugins/platforminputcontexts/libcomposeplatforminputcontextplugin.so",
        "PySide6/Qt/lib/libQt6Core.so.6",
        "libQt6Core.so.6",  # its symlink; libQt6Quick's went with the library
        "certifi/cacert.pem",
    }


def test_spec_builds_a_windowed_tray_exe_and_a_console_twin(spec_run: dict[str, Any]) -> None:
    (tray,) = spec_run["exe"]  # on Linux the twin is a symbolic link, not a second archive
    assert tray["name"] == "couchfarm-worker" and tray["console"] is False
    assert tray["exclude_binaries"] is True  # one folder, not one file
    twin = spec_run["dist"] / "couchfarm-worker" / "desktop-worker-cli"
    assert twin.is_symlink() and os.readlink(twin) == "couchfarm-worker"
    text = SPEC.read_text()
    assert 'name="desktop-worker-cli"' in text and "console=True" in text  # Windows twin
    assert Path(spec_run["scripts"][0]).name == "couchfarm_worker.py"
    entry = (INSTALLER / "couchfarm_worker.py").read_text()
    assert entry.index("freeze_support()") < entry.index("from desktop_worker.cli import main")


# ================================================================== ICU, SSL hook, icon


def test_icu_common_data_round_trips() -> None:
    sys.path.insert(0, str(INSTALLER))
    try:
        import icu_trim
    finally:
        sys.path.remove(str(INSTALLER))
    header = struct.pack("<HBB", 32, 0xDA, 0x27) + b"\0" * 8 + b"CmnD" + b"\0" * 16
    items = [("icudt73l/b.res", b"B" * 5), ("icudt73l/a.icu", b"A" * 17), ("icudt73l/c", b"")]
    data = icu_trim.build_common_data(header, items)
    back_header, back = icu_trim.read_items(data)
    assert back_header == header
    # each item is followed by zeros up to the next 16-byte boundary
    assert [name for name, _ in back] == ["icudt73l/a.icu", "icudt73l/b.res", "icudt73l/c"]
    assert back[0][1] == b"A" * 17 + b"\0" * 15 and back[1][1] == b"B" * 5 + b"\0" * 11
    assert icu_trim.find_common_data(b"\0" * 32 + data) == 32
    assert icu_trim.symbol_name(items) == "icudt73_dat"
    keep = ["icudt73l/root.res", "icudt73l/en.res", "icudt73l/coll/root.res",
            "icudt73l/coll/ucadata.icu", "icudt73l/nfkc.nrm", "icudt73l/supplementalData.res",
            "icudt73l/zoneinfo64.res", "icudt73l/brkitr/word.brk", "icudt73l/pool.res"]  # fmt: skip
    drop = ["icudt73l/de.res", "icudt73l/zh_Hant_TW.res", "icudt73l/ibm-943_P15A-2003.cnv",
            "icudt73l/brkitr/cjdict.dict", "icudt73l/translit/root.res", "icudt73l/curr/fr.res",
            "icudt73l/rbnf/en.res", "icudt73l/coll/zh.res"]  # fmt: skip
    assert all(icu_trim.wanted(n) for n in keep)
    assert not any(icu_trim.wanted(n) for n in drop)


def test_trimmed_icu_library_serves_collation_and_case_mapping(tmp_path: Path) -> None:
    import PySide6

    qtlib = Path(PySide6.__file__).parent / "Qt" / "lib"
    source = next(iter(sorted(qtlib.glob("libicudata.so.*"))), None)
    if source is None or shutil.which("cc") is None or shutil.which("nm") is None:
        pytest.skip("needs PySide6's Linux ICU, cc and nm")
    sys.path.insert(0, str(INSTALLER))
    try:
        import icu_trim
    finally:
        sys.path.remove(str(INSTALLER))
    path, kept, dropped = icu_trim.trim(source, tmp_path)
    assert path.stat().st_size < 8_000_000 < source.stat().st_size
    assert kept < 200 < dropped
    major = source.name.rsplit(".", 1)[1]
    probe = textwrap.dedent(
        f"""
        import ctypes
        ctypes.CDLL({str(path)!r}, mode=ctypes.RTLD_GLOBAL)
        uc = ctypes.CDLL({str(qtlib / f"libicuuc.so.{major}")!r}, mode=ctypes.RTLD_GLOBAL)
        i18n = ctypes.CDLL({str(qtlib / f"libicui18n.so.{major}")!r}, mode=ctypes.RTLD_GLOBAL)
        err = ctypes.c_int(0)
        i18n.ucol_open_{major}.restype = ctypes.c_void_p
        col = i18n.ucol_open_{major}(b"en_US", ctypes.byref(err))
        assert col and err.value <= 0, err.value
        a, b = "apple".encode("utf-16-le"), "Banana".encode("utf-16-le")
        assert i18n.ucol_strcoll_{major}(ctypes.c_void_p(col), a, 5, b, 6) == -1
        err = ctypes.c_int(0)
        out = ctypes.create_string_buffer(64)
        s = "straße".encode("utf-16-le")
        n = uc.u_strToUpper_{major}(out, 32, s, 6, b"de", ctypes.byref(err))
        assert err.value <= 0 and out.raw[: n * 2].decode("utf-16-le") == "STRASSE"
        print("icu ok")
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.stdout.strip() == "icu ok", done.stderr


def test_ssl_hook_points_openssl_at_certifi_only_without_a_system_store(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    import ssl

    import certifi

    hook = str(INSTALLER / "rthook_ssl.py")
    missing = ssl.DefaultVerifyPaths(None, None, "SSL_CERT_FILE", "/nowhere/cert.pem",
                                     "SSL_CERT_DIR", "/nowhere/certs")  # fmt: skip
    monkeypatch.setattr(ssl, "get_default_verify_paths", lambda: missing)
    env: dict[str, str] = {}
    monkeypatch.setattr(os, "environ", env)
    monkeypatch.setattr(sys, "platform", "linux")
    runpy.run_path(hook)
    assert env == {"SSL_CERT_FILE": certifi.where()}

    cafile = tmp_path / "ca.pem"
    cafile.write_text("x")
    present = ssl.DefaultVerifyPaths(str(cafile), None, "SSL_CERT_FILE", str(cafile),
                                     "SSL_CERT_DIR", "/nowhere")  # fmt: skip
    monkeypatch.setattr(ssl, "get_default_verify_paths", lambda: present)
    env.clear()
    runpy.run_path(hook)
    assert env == {}  # the system's store stays in charge
    env["SSL_CERT_DIR"] = "/etc/my-certs"
    monkeypatch.setattr(ssl, "get_default_verify_paths", lambda: missing)
    runpy.run_path(hook)
    assert env == {"SSL_CERT_DIR": "/etc/my-certs"}  # the user's choice wins


def test_the_icon_is_a_multi_size_png_ico() -> None:
    data = (INSTALLER / "couchfarm.ico").read_bytes()
    reserved, kind, count = struct.unpack_from("<HHH", data)
    assert (reserved, kind) == (0, 1) and count >= 5
    sizes = []
    for i in range(count):
        width, _h, _c, _r, _p, _b, length, offset = struct.unpack_from(
            "<BBBBHHII", data, 6 + 16 * i
        )
        sizes.append(width or 256)
        assert data[offset : offset + 8] == b"\x89PNG\r\n\x1a\n"
        assert offset + length <= len(data)
    assert {16, 32, 48, 256} <= set(sizes)


def test_make_package_target_builds_and_self_tests() -> None:
    makefile = (ROOT / "Makefile").read_text()
    match = re.search(r"^package:.*\n((?:\t.*\n)+)", makefile, re.MULTILINE)
    assert match, "no package target"
    assert "installer/build.py" in match.group(1)
    build = (INSTALLER / "build.py").read_text()
    for needed in ["--self-test", "QT_QPA_PLATFORM", "offscreen", "--distpath", "--workpath"]:
        assert needed in build
    assert re.search(r"BUDGET_MB = \{\"linux\": 110\}", build)


# ================================================================== Windows


def _iss_sections() -> dict[str, list[str]]:
    sections: dict[str, list[str]] = {}
    current = ""
    for raw in ISS.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith(";"):
            continue
        header = re.fullmatch(r"\[(\w+)\]", line)
        if header:
            current = header.group(1)
            sections.setdefault(current, [])
        elif current:
            sections[current].append(line)
    return sections


def _unquote(value: str) -> str:
    if len(value) >= 2 and value[0] == value[-1] == '"':
        return value[1:-1].replace('""', '"')
    return value


def _iss_entries(lines: list[str]) -> list[dict[str, str]]:
    """'Name: "x"; Filename: "y"; Flags: a b' lines as dicts."""
    entries = []
    for line in lines:
        parts = re.findall(r'(\w+):\s*("(?:[^"]|"")*"|[^;]*)', line)
        entries.append({k: _unquote(v.strip()) for k, v in parts})
    return entries


def _iss_defines() -> dict[str, str]:
    return dict(re.findall(r'#define (\w+) "([^"]*)"', ISS.read_text()))


def test_inno_setup_is_per_user_with_start_menu_and_launch() -> None:
    sections = _iss_sections()
    for name in ["Setup", "Tasks", "Files", "Icons", "Registry", "Run", "UninstallRun", "Code"]:
        assert name in sections, name
    setup = configparser.ConfigParser(interpolation=None, strict=False)
    setup.optionxform = str  # type: ignore[assignment,method-assign]
    setup.read_string("[Setup]\n" + "\n".join(sections["Setup"]))
    options = dict(setup["Setup"])
    assert options["PrivilegesRequired"] == "lowest"
    assert options["DefaultDirName"] == r"{autopf}\{#AppName}"  # %LOCALAPPDATA%\Programs
    assert re.fullmatch(r"\{\{[0-9A-F-]{36}\}", options["AppId"])
    assert (INSTALLER / options["SetupIconFile"]).exists()
    defines = _iss_defines()
    assert defines["AppExe"] == "couchfarm-worker.exe"
    assert defines["CliExe"] == "desktop-worker-cli.exe"
    files = _iss_entries(sections["Files"])
    assert files[0]["Source"] == r"dist\couchfarm-worker\*"
    assert "recursesubdirs" in files[0]["Flags"]
    icons = _iss_entries(sections["Icons"])
    assert {"Name": r"{group}\{#AppName}", "Filename": r"{app}\{#AppExe}"}.items() <= icons[
        0
    ].items()
    assert any(i["Filename"] == "{uninstallexe}" for i in icons)
    (run,) = _iss_entries(sections["Run"])
    assert run["Filename"] == r"{app}\{#AppExe}"
    assert "postinstall" in run["Flags"] and "skipifsilent" in run["Flags"]


def test_inno_setup_start_at_login_is_the_apps_own_run_value() -> None:
    from desktop_worker.tray import autostart

    defines = _iss_defines()
    assert defines["RunKey"] == autostart.RUN_KEY
    assert defines["RunValue"] == autostart.RUN_VALUE
    sections = _iss_sections()
    (task, *_rest) = _iss_entries(sections["Tasks"])
    assert task["Name"] == "startatlogin"
    assert task["Description"] == "Start Couchfarm when I log in"
    add, remove = _iss_entries(sections["Registry"])
    assert add["Root"] == "HKCU" and add["Subkey"] == "{#RunKey}"
    assert add["ValueName"] == "{#RunValue}" and add["Tasks"] == "startatlogin"
    assert add["ValueData"] == '"{app}\\{#AppExe}"'  # the path, quoted
    assert "uninsdeletevalue" in add["Flags"]
    assert remove["Tasks"] == "not startatlogin" and remove["Flags"] == "deletevalue"


def test_inno_setup_uninstaller_asks_about_local_data(monkeypatch: pytest.MonkeyPatch) -> None:
    code = "\n".join(_iss_sections()["Code"])
    step = code[code.index("procedure CurUninstallStepChanged") :]
    assert "usUninstall" in step and "usPostUninstall" in step
    assert "MsgBox(" in step and "MB_YESNO" in step and "IDYES" in step
    assert "UninstallSilent" in step  # a silent uninstall keeps the data
    assert "spool" in step
    assert "DelTree(SettingsFolder()" in step and "DelTree(LocalDataFolder()" in step
    assert "RegDeleteValue(HKEY_CURRENT_USER, '{#RunKey}', '{#RunValue}')" in step
    # the folders it deletes are the ones the app uses on Windows
    from desktop_worker import config
    from desktop_worker.tray import store

    monkeypatch.setattr(sys, "platform", "win32")
    monkeypatch.setenv("LOCALAPPDATA", r"C:\Users\u\AppData\Local")
    monkeypatch.setenv("APPDATA", r"C:\Users\u\AppData\Roaming")
    assert str(config.default_data_dir()).endswith("Local/Couchfarm")
    assert str(store.default_config_dir()).endswith("Roaming/Couchfarm")
    assert "ExpandConstant('{localappdata}\\Couchfarm')" in code
    assert "ExpandConstant('{userappdata}\\Couchfarm')" in code
    uninstall_run = "\n".join(_iss_sections()["UninstallRun"])
    assert "taskkill.exe" in uninstall_run and "{#AppExe}" in uninstall_run


def test_windows_workflow_builds_self_tests_and_uploads_the_installer() -> None:
    workflow = yaml.safe_load(WORKFLOW.read_text())
    triggers = workflow.get("on", workflow.get(True))  # YAML 1.1 reads `on` as true
    assert "pull_request" in triggers and "push" in triggers
    job = workflow["jobs"]["package"]
    assert job["runs-on"] == "windows-latest"
    steps = job["steps"]
    uses = [s.get("uses", "") for s in steps]
    assert any(u.startswith("actions/checkout@") for u in uses)
    (python,) = [s for s in steps if s.get("uses", "").startswith("actions/setup-python@")]
    assert str(python["with"]["python-version"]) == "3.11"
    runs = [(s, s.get("run", "")) for s in steps]

    def step_running(*needles: str) -> dict[str, Any]:
        found = [s for s, run in runs if all(n in run for n in needles)]
        assert found, needles
        return found[0]

    step_running("pip install", ".[desktop,package]")
    step_running("pyinstaller", "installer/couchfarm-worker.spec", "--distpath installer/dist")
    selftest_step = step_running(r"desktop-worker-cli.exe --self-test", "LASTEXITCODE")
    assert selftest_step["env"]["QT_QPA_PLATFORM"] == "offscreen"
    step_running("choco install innosetup")
    step_running("ISCC.exe", "/DAppVersion=", r"installer\couchfarm-worker.iss")
    step_running("/VERYSILENT", "/TASKS=startatlogin", "unins000.exe")
    order = [i for i, (_s, run) in enumerate(runs) if "--self-test" in run or "ISCC" in run]
    assert order == sorted(order) and len(order) >= 2
    (upload,) = [s for s in steps if s.get("uses", "").startswith("actions/upload-artifact@")]
    assert "setup.exe" in upload["with"]["path"]
    assert upload["with"]["if-no-files-found"] == "error"


# ================================================================== versioning


@pytest.mark.parametrize(
    ("mine", "minimum", "too_old"),
    [
        ("0.0.9", "0.1.0", True),
        ("0.1.0", "0.1.0", False),
        ("0.1", "0.1.0", False),
        ("0.1.0+local", "0.1.0", False),
        ("0.10.0", "0.9.0", False),
        ("0.9.0", "0.10.0", True),
        ("0.0.0+source", "0.1.0", False),  # an uninstalled source tree: version unknown
        ("0.0.9", None, False),
        ("0.0.9", "", False),
        ("0.0.9", 3, False),
    ],
)
def test_worker_too_old(mine: str, minimum: object, too_old: bool) -> None:
    assert (worker_too_old(mine, minimum) is not None) is too_old


def test_the_refusal_names_both_versions() -> None:
    assert worker_too_old(OLD, MIN_WORKER_VERSION) == REFUSAL
    assert at_least(__version__, MIN_WORKER_VERSION)  # this very build is not refused


def test_hub_init_writes_the_policy_and_never_lowers_it(couch_server: Any) -> None:
    admin = couch_server.admin()
    db = f"farm_policy_{secrets.token_hex(3)}"
    try:
        report, _ = provision.init(admin, db, now=admin.now(), hub_user="")
        assert f"{db}/{POLICY_DOC_ID}: min_worker_version {MIN_WORKER_VERSION}" in report.lines
        doc = admin.get(db, POLICY_DOC_ID)
        assert {k: v for k, v in doc.items() if not k.startswith("_")} == {
            "type": "hub",
            "min_worker_version": MIN_WORKER_VERSION,
        }
        again, _ = provision.init(admin, db, now=admin.now(), hub_user="")
        assert again.changes == 0
        admin.put(db, {**admin.get(db, POLICY_DOC_ID), "min_worker_version": "9.0.0"})
        raised, _ = provision.init(admin, db, now=admin.now(), hub_user="")
        assert raised.changes == 0  # an operator's higher minimum stays
        assert admin.get(db, POLICY_DOC_ID)["min_worker_version"] == "9.0.0"
        admin.put(db, {**admin.get(db, POLICY_DOC_ID), "min_worker_version": "0.0.1"})
        report, _ = provision.init(admin, db, now=admin.now(), hub_user="")
        line = f"{db}/{POLICY_DOC_ID}: min_worker_version {MIN_WORKER_VERSION} (was 0.0.1)"
        assert line in report.lines and report.changes == 1
    finally:
        admin.delete_db(db)


def _seed(hub: Couch, db: str, tube: str) -> str:
    now = hub.now().replace(microsecond=0)
    stamp = to_wire(now)
    task = Task(
        _id=task_id("acme", f"ver-{tube}"),
        client="acme",
        slug=f"ver-{tube}",
        kind="demo.sleep",
        input={"ms": 0},
        schedule={"every": 60},
        tube=tube,
        ttr=30,
        created_at=stamp,
        updated_at=stamp,
    )
    hub.put(db, task.to_doc())
    occ = states.materialize(task, now - timedelta(seconds=1), now)
    hub.put(db, occ.to_doc())
    return occ.id


def _wait(check: Callable[[], Any], timeout: float = 20.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"not within {timeout} s: {check}")


@pytest.fixture
def policy(farm: Any) -> Iterator[Callable[[str], None]]:
    """Set the farm's minimum worker version; put the original back afterwards."""
    original = farm.admin.get(farm.db, POLICY_DOC_ID)["min_worker_version"]

    def set_minimum(value: str) -> None:
        doc = farm.admin.get(farm.db, POLICY_DOC_ID)
        farm.admin.put(farm.db, {**doc, "min_worker_version": value})

    yield set_minimum
    set_minimum(original)


def test_an_old_worker_refuses_to_claim_and_says_why(
    farm: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, policy: Callable[[str], None]
) -> None:
    import desktop_worker.engine as engine_module

    monkeypatch.setattr(engine_module, "__version__", OLD)
    tube = f"ver-{secrets.token_hex(3)}"
    occ_id = _seed(farm.hub, farm.db, tube)
    config = WorkerConfig(
        hub_urls=[farm.server.url],
        name="w3",
        password=farm.passwords["w3"],
        db=farm.db,
        tubes=[tube],
        spool_path=tmp_path / "spool.sqlite3",
        poll_interval_s=1.0,
        heartbeat_interval_s=0.2,
    )
    events: list[EngineEvent] = []
    engine = Engine(config, feed_wait_s=2.0)
    engine.add_listener(events.append)
    engine.start()
    try:
        _wait(lambda: engine.state == "error")
        assert engine.why == REFUSAL
        assert any(e.name == "state_changed" and e.why == REFUSAL for e in events)
        doc = _wait(
            lambda: (
                (farm.admin.get_or_none(farm.db, worker_id("w3")) or {}).get("state") == "paused"
                and farm.admin.get(farm.db, worker_id("w3"))
            )
        )
        assert doc["version"] == OLD  # the operator sees which worker is too old
        time.sleep(1.5)  # claim loop turns, changes feed fires: still nothing claimed
        assert farm.admin.get(farm.db, occ_id)["state"] == "ready"
        assert engine.claim_stats.view_reads == 0 and engine.claim_stats.puts == 0

        policy("0.0.1")  # the hub lowers its minimum: the worker works, no restart
        _wait(lambda: farm.admin.get(farm.db, occ_id)["state"] == "done", timeout=30)
        assert engine.why == ""
    finally:
        engine.stop()


def test_the_refusal_reaches_the_tray(
    farm: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, qtbot: Any
) -> None:
    from keyring.backends import fail

    import desktop_worker.engine as engine_module
    from desktop_worker.tray.app import build_app
    from desktop_worker.tray.clock import SystemClock
    from desktop_worker.tray.conditions import IdleDetector, Power
    from desktop_worker.tray.icons import TrayState
    from desktop_worker.tray.store import SecretStore, SettingsStore

    monkeypatch.setattr(engine_module, "__version__", OLD)
    config = WorkerConfig(
        hub_urls=[farm.server.url],
        name="w2",
        password=farm.passwords["w2"],
        db=farm.db,
        tubes=[f"ver-{secrets.token_hex(3)}"],
        spool_path=tmp_path / "spool.sqlite3",
        poll_interval_s=1.0,
    )
    store = SettingsStore(
        tmp_path / "worker.toml", data_dir=tmp_path, secrets=SecretStore(tmp_path, fail.Keyring())
    )
    quits: list[int] = []
    app = build_app(
        config,
        Engine,
        SystemClock(),
        store=store,
        quit_app=lambda: quits.append(1),
        idle=IdleDetector("none", False),
        power=lambda: Power(False, None, "test"),
        autostart_env={"XDG_CONFIG_HOME": str(tmp_path / "xdg")},
    )
    try:
        qtbot.waitUntil(lambda: app.model.tray_state is TrayState.ERROR, timeout=20000)
        assert app.model.status_line() == f"Error: {REFUSAL}"
        assert REFUSAL in app.tray.icon.toolTip()
        assert any("notice" in e.text and REFUSAL in e.text for e in app.model.log)
    finally:
        app.quit_now()
        qtbot.waitUntil(lambda: quits == [1], timeout=20000)


def test_spec_file_is_valid_python() -> None:
    ast.parse(SPEC.read_text())
