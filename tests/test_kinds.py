"""hub.protocol.kinds: the input schema of each built-in kind and messages a person can act on."""

from __future__ import annotations

from typing import Any

import pytest
from jsonschema import Draft202012Validator

from hub.protocol.kinds import (
    KIND_SCHEMAS,
    NETWORK_KINDS,
    apply_defaults,
    known_kinds,
    schema_problems,
    validate_against,
    validate_input,
)

BUILT_INS = ["demo.sleep", "dns.resolve", "http.check", "http.fetch", "script", "tcp.connect"]


def test_known_kinds() -> None:
    assert known_kinds() == BUILT_INS
    assert sorted(KIND_SCHEMAS) == BUILT_INS
    assert set(BUILT_INS) > NETWORK_KINDS


def _walk(schema: Any) -> list[dict[str, Any]]:
    found = []
    if isinstance(schema, dict):
        found.append(schema)
        for value in schema.values():
            found += _walk(value)
    elif isinstance(schema, list):
        for value in schema:
            found += _walk(value)
    return found


@pytest.mark.parametrize("kind", BUILT_INS)
def test_schemas_are_draft_2020_12_closed_and_capped(kind: str) -> None:
    schema = KIND_SCHEMAS[kind]
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    Draft202012Validator.check_schema(schema)
    assert schema_problems(schema) == []
    for node in _walk(schema):
        if node.get("type") == "object" and "properties" in node:
            assert node.get("additionalProperties") is False, node
        if node.get("type") == "string" and "format" not in node and "enum" not in node:
            assert "maxLength" in node or "pattern" in node, node
        if node.get("type") == "array":
            assert "maxItems" in node, node
        if node.get("type") == "object" and "properties" not in node:
            assert "maxProperties" in node, node


VALID: list[tuple[str, dict[str, Any]]] = [
    ("http.check", {"url": "https://example.com/"}),
    (
        "http.check",
        {
            "url": "http://example.com:8080/a?b=1#c",
            "method": "HEAD",
            "expect_status": [200, 301],
            "keyword": "Welcome",
            "timeout_s": 0.1,
            "headers": {"Accept-Language": "en", "X-Token": "abc"},
        },
    ),
    ("http.check", {"url": "HTTPS://[2001:db8::1]:443/", "expect_status": 204, "timeout_s": 60}),
    ("http.fetch", {"url": "https://api.example.com/v1", "extract": {"json_pointer": "/a/0"}}),
    ("http.fetch", {"url": "https://example.com/", "extract": {"regex": r"v(\d+)"}}),
    ("http.fetch", {"url": "https://example.com/", "extract": {"json_pointer": ""}}),
    ("dns.resolve", {"name": "example.com"}),
    ("dns.resolve", {"name": "example.com.", "rdtype": "AAAA"}),
    ("tcp.connect", {"host": "mail.example.com", "port": 25}),
    ("tcp.connect", {"host": "192.0.2.7", "port": 65535, "timeout_s": 3}),
    ("tcp.connect", {"host": "2001:db8::7", "port": 1}),
    ("script", {"name": "backup_check", "args": {"path": "/srv", "n": 3}}),
    ("script", {"name": "x"}),
    ("demo.sleep", {"ms": 0}),
    ("demo.sleep", {"ms": 600000, "fail_rate": 1}),
]


@pytest.mark.parametrize(("kind", "data"), VALID)
def test_valid_inputs_pass(kind: str, data: dict[str, Any]) -> None:
    assert validate_input(kind, data) == []


URL_HINT = "(expected http://host[:port]/path or https://..., without spaces or user@)"

INVALID: list[tuple[str, Any, str]] = [
    ("http.check", {"url": "ftp://x"}, f"input.url: 'ftp://x' is not an http(s) URL {URL_HINT}"),
    ("http.check", {"url": "http://user:pw@x/"}, "input.url: 'http://user:pw@x/' is not an http"),
    ("http.check", {"url": "http://a b/"}, "input.url: 'http://a b/' is not an http(s) URL"),
    ("http.check", {"url": "http://x/" + "a" * 2048}, "input.url: longer than 2048 characters"),
    ("http.check", {}, "input: missing required field 'url'"),
    ("http.check", {"url": 7}, "input.url: expected a string, got an integer 7"),
    (
        "http.check",
        {"url": "http://x/", "verify": False},
        "input: unknown field 'verify'; allowed fields: expect_status, headers, keyword, "
        "method, timeout_s, url",
    ),
    (
        "http.check",
        {"url": "http://x/", "method": "POST"},
        "input.method: 'POST' is not one of GET, HEAD",
    ),
    (
        "http.check",
        {"url": "http://x/", "timeout_s": 61},
        "input.timeout_s: 61 is above the maximum 60",
    ),
    (
        "http.check",
        {"url": "http://x/", "timeout_s": 0},
        "input.timeout_s: 0 is below the minimum 0.1",
    ),
    (
        "http.check",
        {"url": "http://x/", "expect_status": 99},
        "input.expect_status: 99 must be an HTTP status code (100-599) or a list of 1 to 50",
    ),
    (
        "http.check",
        {"url": "http://x/", "expect_status": []},
        "input.expect_status: must be an HTTP status code (100-599) or a list",
    ),
    ("http.check", {"url": "http://x/", "keyword": ""}, "input.keyword: must not be empty"),
    (
        "http.check",
        {"url": "http://x/", "headers": {"Bad Header": "x"}},
        "input.headers: key 'Bad Header' is not a valid HTTP header name",
    ),
    (
        "http.check",
        {"url": "http://x/", "headers": {"X-A": "1\r\nInjected: yes"}},
        "input.headers.X-A: '1\\r\\nInjected: yes' must not contain line breaks",
    ),
    (
        "http.check",
        {"url": "http://x/", "headers": {f"X-{i}": "v" for i in range(21)}},
        "input.headers: more than 20 fields",
    ),
    (
        "http.fetch",
        {"url": "http://x/", "extract": {"regex": "(unclosed"}},
        "input.extract.regex: '(unclosed' is not a valid regex",
    ),
    (
        "http.fetch",
        {"url": "http://x/", "extract": {"json_pointer": "a/b"}},
        "input.extract.json_pointer: 'a/b' is not a JSON pointer (RFC 6901)",
    ),
    (
        "http.fetch",
        {"url": "http://x/", "extract": {"json_pointer": "/a", "regex": "b"}},
        'input.extract: must be {"json_pointer": "/a/0/b"} (RFC 6901) or {"regex": "..."}',
    ),
    ("http.fetch", {"url": "http://x/", "method": "GET"}, "input: unknown field 'method'"),
    ("dns.resolve", {"name": "bad..name"}, "input.name: 'bad..name' is not a valid host name"),
    ("dns.resolve", {"name": "a" * 64 + ".com"}, "is not a valid host name"),
    ("dns.resolve", {"name": "x.com", "rdtype": "MX"}, "input.rdtype: 'MX' is not one of A, AAAA"),
    ("tcp.connect", {"host": "x.com", "port": 0}, "input.port: 0 is below the minimum 1"),
    (
        "tcp.connect",
        {"host": "x.com", "port": 65536},
        "input.port: 65536 is above the maximum 65535",
    ),
    (
        "tcp.connect",
        {"host": "x.com", "port": 80.5},
        "input.port: expected an integer, got a number",
    ),
    ("tcp.connect", {"host": "a b", "port": 1}, "input.host: 'a b' is not a host name or an IP"),
    ("tcp.connect", {"host": "x.com"}, "input: missing required field 'port'"),
    ("script", {"name": "../etc/passwd"}, "input.name: '../etc/passwd' is not a script name"),
    ("script", {"name": "x", "args": ["a"]}, "input.args: expected an object, got a list"),
    ("demo.sleep", {"ms": 600001}, "input.ms: 600001 is above the maximum 600000"),
    ("demo.sleep", {"ms": True}, "input.ms: expected an integer, got a boolean True"),
    ("demo.sleep", {"ms": 1, "fail_rate": 1.5}, "input.fail_rate: 1.5 is above the maximum 1"),
    ("demo.sleep", [1], "input: expected an object, got a list"),
    ("demo.sleep", None, "input: expected an object, got null"),
]


@pytest.mark.parametrize(("kind", "data", "message"), INVALID)
def test_invalid_inputs_say_what_to_fix(kind: str, data: Any, message: str) -> None:
    problems = validate_input(kind, data)
    assert problems, f"{data!r} passed"
    assert any(message in problem for problem in problems), problems


def test_every_problem_is_listed_once() -> None:
    problems = validate_input("demo.sleep", {"ms": -1, "fail_rate": 2, "x": 1})
    assert problems == [
        "input: unknown field 'x'; allowed fields: fail_rate, ms",
        "input.fail_rate: 2 is above the maximum 1",
        "input.ms: -1 is below the minimum 0",
    ]


def test_unknown_kind_lists_the_known_ones() -> None:
    assert validate_input("foo.bar", {}) == [
        "unknown kind 'foo.bar'; known kinds: demo.sleep, dns.resolve, http.check, "
        "http.fetch, script, tcp.connect"
    ]


def test_extra_schemas_add_plugin_kinds_but_never_replace_built_ins() -> None:
    extra = {
        "acme.ping": {"type": "object", "properties": {"n": {"type": "integer"}}},
        "demo.sleep": {"type": "object"},
    }
    assert validate_input("acme.ping", {"n": 1}, extra_schemas=extra) == []
    assert validate_input("acme.ping", {"n": "1"}, extra_schemas=extra) == [
        "input.n: expected an integer, got a string '1'"
    ]
    assert validate_input("demo.sleep", {}, extra_schemas=extra) == [
        "input: missing required field 'ms'"
    ]
    assert "acme.ping" in validate_input("nope", {}, extra_schemas=extra)[0]


def test_broken_schemas_are_reported_not_raised() -> None:
    assert schema_problems({"type": "banana"})[0].startswith("invalid JSON Schema:")
    assert schema_problems([1]) == ["a schema must be a JSON object, got a list"]
    assert validate_against({"type": 5}, {})[0].startswith("invalid JSON Schema:")


def test_apply_defaults_fills_top_level_defaults_only() -> None:
    assert apply_defaults("http.check", {"url": "http://x/"}) == {
        "url": "http://x/",
        "method": "GET",
        "timeout_s": 10,
    }
    assert apply_defaults("demo.sleep", {"ms": 5, "fail_rate": 0.5}) == {"ms": 5, "fail_rate": 0.5}
    assert apply_defaults("dns.resolve", {"name": "x"})["rdtype"] == "A"
