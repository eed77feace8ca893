"""desktop_worker.handlers: each built-in kind in-process, scripts, and plugin loading."""

from __future__ import annotations

import json
import re
import textwrap
import time
from collections.abc import Iterator
from importlib import metadata
from pathlib import Path
from typing import Any

import pytest

from desktop_worker import handlers
from desktop_worker.handlers import (
    HandlerContext,
    HandlerError,
    ScriptSpec,
    demo_sleep,
    dns_resolve,
    http_check,
    http_fetch,
    script,
    tcp_connect,
)
from desktop_worker.netguard import NetPolicy
from desktop_worker.runner import Limits, Policy, run_inline
from tests.test_netguard import (
    CERT_NOT_AFTER,
    LocalHTTP,
    closed_port,
    make_cert,
    no_dns,
    serve_http,
    server_tls,
    tcp_listener,
)


@pytest.fixture(scope="module")
def web() -> Iterator[LocalHTTP]:
    with serve_http() as server:
        yield server


def ctx(allow_private: bool = True, **kwargs: Any) -> HandlerContext:
    hosts = kwargs.pop("hosts", None)
    net = NetPolicy(
        allow_private_network=allow_private,
        resolver=no_dns(hosts),
        **{k: kwargs.pop(k) for k in list(kwargs) if k in ("max_response_bytes", "ssl_context")},
    )
    return HandlerContext(policy=net, **kwargs)


# ------------------------------------------------------------------ http.check


def test_http_check_reports_status_latency_size_and_keyword(web: LocalHTTP) -> None:
    out = http_check.run({"url": web.url("/"), "keyword": "couchfarm"}, ctx())
    assert out["status"] == 200
    assert out["ok"] is True
    assert out["bytes"] == len(b"hello from couchfarm tests")
    assert out["keyword_found"] is True
    assert out["tls_expires_at"] is None
    assert isinstance(out["latency_ms"], int) and out["latency_ms"] >= 0
    out = http_check.run({"url": web.url("/"), "keyword": "absent"}, ctx())
    assert out["keyword_found"] is False
    assert http_check.run({"url": web.url("/")}, ctx())["keyword_found"] is None


def test_http_check_ok_follows_expect_status(web: LocalHTTP) -> None:
    assert http_check.run({"url": web.url("/status/503")}, ctx())["ok"] is False
    assert http_check.run({"url": web.url("/status/503"), "expect_status": 503}, ctx())["ok"]
    out = http_check.run({"url": web.url("/status/404"), "expect_status": [200, 404]}, ctx())
    assert (out["status"], out["ok"]) == (404, True)
    out = http_check.run({"url": web.url("/"), "expect_status": [201]}, ctx())
    assert out["ok"] is False


def test_http_check_head_and_headers(web: LocalHTTP) -> None:
    out = http_check.run({"url": web.url("/big?n=1000"), "method": "HEAD"}, ctx())
    assert (out["status"], out["bytes"]) == (200, 0)
    assert web.requests[-1]["method"] == "HEAD"
    out = http_fetch.run({"url": web.url("/headers")}, ctx())
    assert json.loads(out["body"])["User-Agent"].startswith("couchfarm-worker/")


def test_http_check_reports_tls_expiry(tmp_path: Path) -> None:
    import ssl

    cert, key = make_cert(tmp_path)
    context = ssl.create_default_context(cafile=str(cert))
    with serve_http(server_tls(cert, key)) as site:
        out = http_check.run(
            {"url": site.url("/", host="public.test")},
            ctx(hosts={"public.test": ["127.0.0.1"]}, ssl_context=context),
        )
    assert out["status"] == 200
    assert out["tls_expires_at"] == CERT_NOT_AFTER.strftime("%Y-%m-%dT%H:%M:%S.000Z")


def test_refused_target_is_a_permanent_handler_error(web: LocalHTTP) -> None:
    with pytest.raises(HandlerError) as caught:
        http_check.run({"url": web.url("/")}, ctx(allow_private=False))
    assert caught.value.permanent
    assert "loopback" in caught.value.message
    assert "--allow-private-network" in caught.value.message


def test_connection_failure_is_a_transient_handler_error() -> None:
    with pytest.raises(HandlerError) as caught:
        http_check.run({"url": f"http://127.0.0.1:{closed_port()}/", "timeout_s": 2}, ctx())
    assert not caught.value.permanent
    assert "could not connect" in caught.value.message


def test_size_cap_applies_to_handlers(web: LocalHTTP) -> None:
    with pytest.raises(HandlerError, match="larger than this worker's cap") as caught:
        http_check.run({"url": web.url("/stream?n=200000")}, ctx(max_response_bytes=1000))
    assert caught.value.permanent


# ------------------------------------------------------------------ http.fetch


def test_http_fetch_extracts_with_a_json_pointer(web: LocalHTTP) -> None:
    url = web.url("/json")
    out = http_fetch.run({"url": url, "extract": {"json_pointer": "/a/b/1/c"}}, ctx())
    assert (out["found"], out["value"]) == (True, "deep")
    out = http_fetch.run({"url": url, "extract": {"json_pointer": "/t~0x/s~1y"}}, ctx())
    assert out["value"] == 7
    out = http_fetch.run({"url": url, "extract": {"json_pointer": "/a/b/9"}}, ctx())
    assert (out["found"], out["value"]) == (False, None)
    with pytest.raises(HandlerError, match="not JSON"):
        http_fetch.run({"url": web.url("/"), "extract": {"json_pointer": "/a"}}, ctx())


def test_http_fetch_extracts_with_a_regex(web: LocalHTTP) -> None:
    url = web.url("/")
    out = http_fetch.run({"url": url, "extract": {"regex": r"from (?P<who>\w+)"}}, ctx())
    assert out["value"] == "couchfarm"
    assert out["groups"] == {"who": "couchfarm"}
    out = http_fetch.run({"url": url, "extract": {"regex": "hello"}}, ctx())
    assert (out["found"], out["value"]) == (True, "hello")
    out = http_fetch.run({"url": url, "extract": {"regex": "goodbye"}}, ctx())
    assert out["found"] is False


def test_http_fetch_body_is_cut_to_fit_the_output_cap(web: LocalHTTP) -> None:
    out = http_fetch.run({"url": web.url("/")}, ctx())
    assert (out["body"], out["truncated"]) == ("hello from couchfarm tests", False)
    out = http_fetch.run({"url": web.url("/big?n=50000")}, ctx(max_output_bytes=8192))
    assert out["truncated"] is True
    assert len(json.dumps(out)) <= 8192


# ------------------------------------------------------------------ dns.resolve


def test_dns_resolve_answers_from_the_injected_resolver() -> None:
    hosts = {"pub.test": ["93.184.216.34", "2606:2800:220:1::248"]}
    out = dns_resolve.run({"name": "pub.test"}, ctx(allow_private=False, hosts=hosts))
    assert (out["found"], out["addresses"], out["rdtype"]) == (True, ["93.184.216.34"], "A")
    out = dns_resolve.run({"name": "pub.test", "rdtype": "AAAA"}, ctx(hosts=hosts))
    assert out["addresses"] == ["2606:2800:220:1::248"]
    out = dns_resolve.run({"name": "missing.test"}, ctx(hosts=hosts))
    assert (out["found"], out["addresses"]) == (False, [])


def test_dns_resolve_refuses_private_answers_by_default() -> None:
    hosts = {"internal.test": ["10.0.0.1"]}
    with pytest.raises(
        HandlerError, match=re.escape("internal.test resolves to 10.0.0.1")
    ) as caught:
        dns_resolve.run({"name": "internal.test"}, ctx(allow_private=False, hosts=hosts))
    assert caught.value.permanent
    out = dns_resolve.run({"name": "internal.test"}, ctx(allow_private=True, hosts=hosts))
    assert out["addresses"] == ["10.0.0.1"]


# ------------------------------------------------------------------ tcp.connect


def test_tcp_connect_handler() -> None:
    with tcp_listener() as port:
        out = tcp_connect.run({"host": "127.0.0.1", "port": port, "timeout_s": 2}, ctx())
        assert (out["connected"], out["ip"], out["port"]) == (True, "127.0.0.1", port)
        with pytest.raises(HandlerError, match="loopback") as caught:
            tcp_connect.run({"host": "127.0.0.1", "port": port}, ctx(allow_private=False))
        assert caught.value.permanent
    with pytest.raises(HandlerError) as caught:
        tcp_connect.run({"host": "127.0.0.1", "port": closed_port(), "timeout_s": 2}, ctx())
    assert not caught.value.permanent


# ------------------------------------------------------------------ demo.sleep


def test_demo_sleep_reports_progress_and_output() -> None:
    seen: list[tuple[float, float, str]] = []
    started = time.monotonic()
    out = demo_sleep.run({"ms": 250}, ctx(progress_callback=lambda *p: seen.append(p)))
    assert out == {"slept_ms": 250}
    assert time.monotonic() - started >= 0.24  # it really slept
    assert seen[0][:2] == (0, 250)
    assert seen[-1][:2] == (250, 250)
    assert len(seen) >= 3


def test_demo_sleep_fails_at_its_rate() -> None:
    with pytest.raises(HandlerError, match="failed on purpose") as caught:
        demo_sleep.run({"ms": 0, "fail_rate": 1}, ctx())
    assert not caught.value.permanent
    assert demo_sleep.run({"ms": 0, "fail_rate": 0}, ctx()) == {"slept_ms": 0}


# ------------------------------------------------------------------ script

ECHO = """
import json, os, sys
print(json.dumps({
    "argv": sys.argv[1:],
    "stdin": json.load(sys.stdin),
    "secret_visible": "COUCHFARM_TEST_SECRET" in os.environ,
    "script": os.environ.get("COUCHFARM_SCRIPT"),
}))
"""


def write_script(directory: Path, name: str, body: str) -> Path:
    path = directory / f"{name}.py"
    path.write_text(textwrap.dedent(body))
    return path


@pytest.fixture
def scripts(tmp_path: Path) -> dict[str, ScriptSpec]:
    echo_schema = {
        "type": "object",
        "properties": {"target": {"type": "string", "maxLength": 1000}, "n": {"type": "integer"}},
        "required": ["target"],
        "additionalProperties": False,
    }
    return {
        "echo": ScriptSpec(path=str(write_script(tmp_path, "echo", ECHO)), args_schema=echo_schema),
        "not_json": ScriptSpec(path=str(write_script(tmp_path, "nj", "print('hello')"))),
        "fails": ScriptSpec(
            path=str(write_script(tmp_path, "fails", "import sys\nsys.exit('boom: 3')"))
        ),
        "slow": ScriptSpec(
            path=str(write_script(tmp_path, "slow", "import time\ntime.sleep(30)")), timeout_s=0.5
        ),
        "chatty": ScriptSpec(
            path=str(write_script(tmp_path, "chatty", "print('[' + '1,' * 100000 + '1]')"))
        ),
    }


def test_script_must_be_in_the_allow_list(scripts: dict[str, ScriptSpec]) -> None:
    with pytest.raises(HandlerError) as caught:
        script.run({"name": "rm_everything"}, ctx(scripts=scripts))
    assert caught.value.permanent
    assert "'rm_everything' is not in this worker's allow-list" in caught.value.message
    assert "allowed: chatty, echo, fails, not_json, slow" in caught.value.message


def test_script_args_are_validated(scripts: dict[str, ScriptSpec]) -> None:
    with pytest.raises(HandlerError) as caught:
        script.run({"name": "echo", "args": {"target": "x", "n": "3"}}, ctx(scripts=scripts))
    assert caught.value.permanent
    assert "input.args.n: expected an integer" in caught.value.message
    with pytest.raises(HandlerError, match="missing required field 'target'"):
        script.run({"name": "echo", "args": {}}, ctx(scripts=scripts))


def test_script_runs_argv_without_a_shell(
    scripts: dict[str, ScriptSpec], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("COUCHFARM_TEST_SECRET", "hunter2")
    canary = tmp_path / "canary"
    hostile = f"; touch {canary} && rm -rf / $(touch {canary}) `touch {canary}` | cat"
    out = script.run({"name": "echo", "args": {"target": hostile, "n": 2}}, ctx(scripts=scripts))
    assert out["argv"] == ["--n=2", f"--target={hostile}"]
    assert out["stdin"] == {"target": hostile, "n": 2}
    assert out["secret_visible"] is False
    assert out["script"] == "echo"
    assert not canary.exists()


def test_script_failures(scripts: dict[str, ScriptSpec]) -> None:
    c = ctx(scripts=scripts, max_output_bytes=4096)
    with pytest.raises(HandlerError, match="not JSON") as caught:
        script.run({"name": "not_json"}, c)
    assert caught.value.permanent
    with pytest.raises(HandlerError, match="exited with code 1: boom: 3") as caught:
        script.run({"name": "fails"}, c)
    assert not caught.value.permanent
    started = time.monotonic()
    with pytest.raises(HandlerError, match=re.escape("did not finish within 0.5 s")):
        script.run({"name": "slow"}, c)
    assert time.monotonic() - started < 3
    with pytest.raises(HandlerError, match="more than 4096 bytes"):
        script.run({"name": "chatty"}, c)


def test_script_file_must_exist(tmp_path: Path) -> None:
    gone = {"gone": ScriptSpec(path=str(tmp_path / "nope.py"))}
    with pytest.raises(HandlerError, match="does not exist") as caught:
        script.run({"name": "gone"}, ctx(scripts=gone))
    assert caught.value.permanent


# ------------------------------------------------------------------ plugins


def echo_plugin(input: dict[str, Any], ctx: HandlerContext) -> dict[str, Any]:
    ctx.progress(1, 1, "echoed")
    return {"echo": input}


echo_plugin.input_schema = {  # type: ignore[attr-defined]
    "type": "object",
    "properties": {"word": {"type": "string", "maxLength": 10}},
    "required": ["word"],
    "additionalProperties": False,
}


def big_plugin(input: dict[str, Any], ctx: HandlerContext) -> dict[str, Any]:
    return {"blob": "z" * 100_000}


def odd_plugin(input: dict[str, Any], ctx: HandlerContext) -> Any:
    return {"when": object()}


@pytest.fixture
def fake_plugins(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    def ep(name: str, value: str) -> metadata.EntryPoint:
        return metadata.EntryPoint(name=name, value=value, group=handlers.ENTRY_POINT_GROUP)

    points = [
        ep("acme.echo", "tests.test_handlers:echo_plugin"),
        ep("acme.big", "tests.test_handlers:big_plugin"),
        ep("acme.odd", "tests.test_handlers:odd_plugin"),
        ep("http.check", "tests.test_handlers:echo_plugin"),  # may not replace a built-in
        ep("acme.broken", "tests.no_such_module:run"),
        ep("Bad Name", "tests.test_handlers:echo_plugin"),
    ]

    def entry_points(**params: Any) -> list[metadata.EntryPoint]:
        return [p for p in points if p.group == params.get("group")]

    monkeypatch.setattr(metadata, "entry_points", entry_points)
    handlers.clear_plugin_cache()
    yield
    handlers.clear_plugin_cache()


def test_plugins_load_from_entry_points(fake_plugins: None) -> None:
    found = handlers.load_plugins()
    assert sorted(found) == ["acme.big", "acme.echo", "acme.odd"]
    assert handlers.get_handler("http.check") is http_check.run
    assert handlers.get_handler("acme.echo") is echo_plugin
    assert handlers.plugin_schemas()["acme.big"] == {"type": "object"}


def test_plugins_run_only_when_enabled_and_with_valid_input(fake_plugins: None) -> None:
    limits = Limits()
    enabled = Policy(allowed_kinds=frozenset({"acme.echo", "acme.big", "acme.odd"}))
    outcome = run_inline("acme.echo", {"word": "hi"}, limits, enabled)
    assert (outcome.status, outcome.output) == ("ok", {"echo": {"word": "hi"}})

    outcome = run_inline("acme.echo", {"word": "hi"}, limits, Policy())
    assert outcome.permanent and "'acme.echo' is not enabled on this worker" in outcome.error

    outcome = run_inline("acme.echo", {"word": "far too long a word"}, limits, enabled)
    assert outcome.permanent and "input.word: longer than 10 characters" in outcome.error

    outcome = run_inline("acme.big", {}, Limits(max_output_bytes=65536), enabled)
    assert outcome.permanent and "over this worker's cap of 65536 bytes" in outcome.error

    outcome = run_inline("acme.odd", {}, limits, enabled)
    assert outcome.permanent and "not JSON" in outcome.error


def test_unknown_kind_names_the_known_ones() -> None:
    handlers.clear_plugin_cache()
    outcome = run_inline("foo.bar", {}, Limits(), Policy())
    assert outcome.permanent
    assert outcome.error.startswith("unknown kind 'foo.bar'; known kinds on this worker: ")
    assert "http.check" in outcome.error


def test_a_name_outside_the_static_map_fails_without_asking_dns() -> None:
    with pytest.raises(HandlerError, match="does not resolve") as caught:
        http_check.run({"url": "http://example.invalid/"}, ctx())
    assert not caught.value.permanent
