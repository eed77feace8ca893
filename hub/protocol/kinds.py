"""The built-in kinds of work and the JSON Schema for each kind's input.

Pure code: no I/O, no clock, no Qt. The hub checks a task's input here when it is submitted
and the worker checks it again before it runs an occurrence (DESIGN.md section 6), so both
sides give the same answer and the same wording.

Schemas are JSON Schema draft 2020-12. A schema node may carry ``x-errors``, a map from a
JSON Schema keyword to the phrase that replaces jsonschema's own message when that keyword
fails ("is not an http(s) URL" reads better than a regular expression).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # jsonschema is imported on first use: the worker's run processes start faster
    from jsonschema import Draft202012Validator
    from jsonschema.exceptions import ValidationError

DIALECT = "https://json-schema.org/draft/2020-12/schema"

# ------------------------------------------------------------------ building blocks

_URL_PATTERN = r"^[Hh][Tt][Tt][Pp][Ss]?://[^/?#\s@]+([/?#]\S*)?$"
_HOSTNAME_PATTERN = (
    r"^(?=.{1,253}\.?$)[A-Za-z0-9_]([A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?"
    r"(\.[A-Za-z0-9_]([A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?)*\.?$"
)
_HEADER_NAME_PATTERN = r"^[!#$%&'*+.^_`|~0-9A-Za-z-]{1,100}$"
_HEADER_VALUE_PATTERN = r"^[^\r\n\x00]*$"
_IDENTIFIER_PATTERN = r"^[A-Za-z_][A-Za-z0-9_]{0,63}$"
_JSON_POINTER_PATTERN = r"^(/([^~/]|~[01])*)*$"

URL_SCHEMA: dict[str, Any] = {
    "title": "URL",
    "type": "string",
    "maxLength": 2048,
    "pattern": _URL_PATTERN,
    "x-errors": {
        "pattern": "is not an http(s) URL "
        "(expected http://host[:port]/path or https://..., without spaces or user@)"
    },
    "description": "http:// or https:// URL",
}

TIMEOUT_SCHEMA: dict[str, Any] = {
    "title": "Timeout (seconds)",
    "type": "number",
    "minimum": 0.1,
    "maximum": 60,
    "default": 10,
    "description": "seconds for the whole request, redirects included",
}

HOSTNAME_SCHEMA: dict[str, Any] = {
    "type": "string",
    "minLength": 1,
    "maxLength": 254,
    "pattern": _HOSTNAME_PATTERN,
    "x-errors": {"pattern": "is not a valid host name (letters, digits, '-', '.')"},
}

STATUS_CODE_SCHEMA: dict[str, Any] = {"type": "integer", "minimum": 100, "maximum": 599}

# ------------------------------------------------------------------ the kinds

HTTP_CHECK_SCHEMA: dict[str, Any] = {
    "$schema": DIALECT,
    "title": "http.check",
    "description": "Request a URL and report status, latency, size and TLS expiry.",
    "type": "object",
    "additionalProperties": False,
    "required": ["url"],
    "properties": {
        "url": URL_SCHEMA,
        "method": {"title": "HTTP method", "enum": ["GET", "HEAD"], "default": "GET"},
        "expect_status": {
            "title": "Expected HTTP status",
            "description": "status (or list of statuses) that counts as ok; "
            "without it any status below 400 counts as ok",
            "anyOf": [
                STATUS_CODE_SCHEMA,
                {"type": "array", "items": STATUS_CODE_SCHEMA, "minItems": 1, "maxItems": 50},
            ],
            "x-errors": {
                "anyOf": "must be an HTTP status code (100-599) or a list of 1 to 50 of them"
            },
        },
        "keyword": {
            "title": "Keyword",
            "description": "text the response body must contain for the check to count as ok",
            "type": "string",
            "minLength": 1,
            "maxLength": 200,
        },
        "timeout_s": TIMEOUT_SCHEMA,
        "headers": {
            "title": "Request headers",
            "description": "extra HTTP headers to send, as a JSON object of name: value",
            "type": "object",
            "maxProperties": 20,
            "propertyNames": {
                "pattern": _HEADER_NAME_PATTERN,
                "x-errors": {"pattern": "is not a valid HTTP header name"},
            },
            "additionalProperties": {
                "type": "string",
                "maxLength": 1000,
                "pattern": _HEADER_VALUE_PATTERN,
                "x-errors": {"pattern": "must not contain line breaks"},
            },
        },
    },
}

HTTP_FETCH_SCHEMA: dict[str, Any] = {
    "$schema": DIALECT,
    "title": "http.fetch",
    "description": "GET a URL and return its body, or one value extracted from it.",
    "type": "object",
    "additionalProperties": False,
    "required": ["url"],
    "properties": {
        "url": URL_SCHEMA,
        "extract": {
            "title": "Extract",
            "description": "one value to return instead of the whole body",
            "oneOf": [
                {
                    "type": "object",
                    "additionalProperties": False,
                    "required": ["json_pointer"],
                    "properties": {
                        "json_pointer": {
                            "type": "string",
                            "maxLength": 500,
                            "pattern": _JSON_POINTER_PATTERN,
                            "x-errors": {
                                "pattern": "is not a JSON pointer (RFC 6901), e.g. '/items/0/name'"
                            },
                        }
                    },
                },
                {
                    "type": "object",
                    "additionalProperties": False,
                    "required": ["regex"],
                    "properties": {
                        "regex": {
                            "type": "string",
                            "minLength": 1,
                            "maxLength": 500,
                            "format": "regex",
                        }
                    },
                },
            ],
            "x-errors": {
                "oneOf": 'must be {"json_pointer": "/a/0/b"} (RFC 6901) '
                'or {"regex": "..."} (a valid regular expression)'
            },
        },
        "timeout_s": TIMEOUT_SCHEMA,
    },
}

DNS_RESOLVE_SCHEMA: dict[str, Any] = {
    "$schema": DIALECT,
    "title": "dns.resolve",
    "description": "Resolve a host name to its addresses.",
    "type": "object",
    "additionalProperties": False,
    "required": ["name"],
    "properties": {
        "name": {**HOSTNAME_SCHEMA, "title": "Host name"},
        "rdtype": {"title": "Record type", "enum": ["A", "AAAA"], "default": "A"},
    },
}

TCP_CONNECT_SCHEMA: dict[str, Any] = {
    "$schema": DIALECT,
    "title": "tcp.connect",
    "description": "Open a TCP connection and report how long it took.",
    "type": "object",
    "additionalProperties": False,
    "required": ["host", "port"],
    "properties": {
        "host": {
            "title": "Host",
            "description": "host name or IP address",
            "type": "string",
            "maxLength": 254,
            "anyOf": [
                {"pattern": _HOSTNAME_PATTERN},
                {"format": "ipv4"},
                {"format": "ipv6"},
            ],
            "x-errors": {"anyOf": "is not a host name or an IP address"},
        },
        "port": {"title": "Port", "type": "integer", "minimum": 1, "maximum": 65535},
        "timeout_s": TIMEOUT_SCHEMA,
    },
}

SCRIPT_SCHEMA: dict[str, Any] = {
    "$schema": DIALECT,
    "title": "script",
    "description": "Run a script from the worker's local allow-list; its stdout (JSON) is "
    "the output. Arguments are checked against the schema the worker declares for it.",
    "type": "object",
    "additionalProperties": False,
    "required": ["name"],
    "properties": {
        "name": {
            "title": "Script name",
            "description": "a script on the worker's allow-list",
            "type": "string",
            "pattern": _IDENTIFIER_PATTERN,
            "x-errors": {"pattern": "is not a script name (letters, digits, '_'; max 64)"},
        },
        "args": {
            "title": "Arguments",
            "description": "passed to the script, checked against the schema it declares",
            "type": "object",
            "maxProperties": 50,
            "default": {},
        },
    },
}

DEMO_SLEEP_SCHEMA: dict[str, Any] = {
    "$schema": DIALECT,
    "title": "demo.sleep",
    "description": "Sleep, reporting progress; fail at random with probability fail_rate.",
    "type": "object",
    "additionalProperties": False,
    "required": ["ms"],
    "properties": {
        "ms": {
            "title": "Duration (milliseconds)",
            "type": "integer",
            "minimum": 0,
            "maximum": 600000,
        },
        "fail_rate": {
            "title": "Failure rate",
            "description": "chance that a run fails on purpose, from 0 (never) to 1 (always)",
            "type": "number",
            "minimum": 0,
            "maximum": 1,
            "default": 0,
        },
    },
}

KIND_SCHEMAS: dict[str, dict[str, Any]] = {
    "http.check": HTTP_CHECK_SCHEMA,
    "http.fetch": HTTP_FETCH_SCHEMA,
    "dns.resolve": DNS_RESOLVE_SCHEMA,
    "tcp.connect": TCP_CONNECT_SCHEMA,
    "script": SCRIPT_SCHEMA,
    "demo.sleep": DEMO_SLEEP_SCHEMA,
}

# Kinds that reach out to the network (the worker applies its network guard to them).
NETWORK_KINDS = frozenset({"http.check", "http.fetch", "dns.resolve", "tcp.connect"})

_BUILTIN_VALIDATORS: dict[str, Draft202012Validator] = {}


def known_kinds() -> list[str]:
    """The built-in kinds, sorted."""
    return sorted(KIND_SCHEMAS)


def schema_problems(schema: object) -> list[str]:
    """Why ``schema`` is not a usable draft 2020-12 schema; empty when it is."""
    if not isinstance(schema, Mapping):
        return [f"a schema must be a JSON object, got {_json_type(schema)}"]
    from jsonschema import Draft202012Validator

    try:
        Draft202012Validator.check_schema(schema)
    except Exception as exc:  # jsonschema.SchemaError or a bad regex inside it
        return [f"invalid JSON Schema: {getattr(exc, 'message', exc)}"]
    return []


def validate_input(
    kind: str, data: object, extra_schemas: dict[str, dict[str, Any]] | None = None
) -> list[str]:
    """Problems with ``data`` as the input of ``kind``, one line each; empty when valid.

    ``extra_schemas`` adds kinds (plugins) or replaces nothing: a built-in kind always uses
    its built-in schema.
    """
    schemas: dict[str, dict[str, Any]] = {**(extra_schemas or {}), **KIND_SCHEMAS}
    schema = schemas.get(kind)
    if schema is None:
        return [f"unknown kind {kind!r}; known kinds: {', '.join(sorted(schemas))}"]
    return validate_against(schema, data, prefix="input")


def validate_against(schema: Mapping[str, Any], data: object, prefix: str = "input") -> list[str]:
    """Problems with ``data`` under ``schema`` (a draft 2020-12 schema), one line each."""
    problems = schema_problems(schema)
    if problems:
        return problems
    validator = _validator(schema)
    errors = sorted(
        validator.iter_errors(data), key=lambda e: (list(map(str, e.absolute_path)), e.message)
    )
    lines = [_describe(error, prefix) for error in errors]
    return list(dict.fromkeys(lines))  # drop duplicates, keep order


def apply_defaults(kind: str, data: Mapping[str, Any]) -> dict[str, Any]:
    """``data`` with the top-level defaults of ``kind``'s schema filled in."""
    schema = KIND_SCHEMAS.get(kind, {})
    filled = dict(data)
    for name, prop in schema.get("properties", {}).items():
        if name not in filled and isinstance(prop, Mapping) and "default" in prop:
            filled[name] = json.loads(json.dumps(prop["default"]))
    return filled


# ------------------------------------------------------------------ messages


def _validator(schema: Mapping[str, Any]) -> Draft202012Validator:
    from jsonschema import Draft202012Validator, FormatChecker

    for kind, known in KIND_SCHEMAS.items():
        if schema is known:
            cached = _BUILTIN_VALIDATORS.get(kind)
            if cached is None:
                cached = Draft202012Validator(schema, format_checker=FormatChecker())
                _BUILTIN_VALIDATORS[kind] = cached
            return cached
    return Draft202012Validator(schema, format_checker=FormatChecker())


def _where(prefix: str, path: Iterable[Any]) -> str:
    text = prefix
    for part in path:
        text += f"[{part}]" if isinstance(part, int) else f".{part}"
    return text


def _json_type(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list | tuple):
        return "a list"
    if isinstance(value, Mapping):
        return "an object"
    return type(value).__name__


def _shown(value: object) -> str:
    if isinstance(value, Mapping | list | tuple):
        return _json_type(value)
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


_TYPE_WORDS = {
    "object": "an object",
    "array": "a list",
    "string": "a string",
    "integer": "an integer",
    "number": "a number",
    "boolean": "true or false",
    "null": "null",
}


def _describe(error: ValidationError, prefix: str) -> str:
    where = _where(prefix, error.absolute_path)
    keyword = str(error.validator)
    value = error.instance
    schema = error.schema if isinstance(error.schema, Mapping) else {}
    custom = schema.get("x-errors", {}).get(keyword) if isinstance(schema, Mapping) else None

    if keyword in ("oneOf", "anyOf") and isinstance(value, Mapping) and error.context:
        # The branch whose required fields the input has is the one the author meant:
        # report what is wrong inside it rather than "matches none of the branches".
        meant = [
            index
            for index, branch in enumerate(error.validator_value)
            if isinstance(branch, Mapping)
            and branch.get("required")
            and all(name in value for name in branch["required"])
        ]
        if len(meant) == 1:
            inner = [e for e in error.context if e.relative_schema_path[0] == meant[0]]
            if inner:
                return "; ".join(_describe(e, prefix) for e in inner)
    if "propertyNames" in [str(part) for part in error.schema_path]:
        return f"{where}: key {_shown(value)} {custom or 'is not allowed'}"
    if custom:
        if isinstance(value, Mapping | list | tuple):
            return f"{where}: {custom}"
        return f"{where}: {_shown(value)} {custom}"
    if keyword == "required":
        missing = [name for name in error.validator_value if name not in (value or {})]
        return f"{where}: missing required field {', '.join(repr(m) for m in missing)}"
    if keyword in ("additionalProperties", "unevaluatedProperties"):
        allowed = sorted(schema.get("properties", {}))
        extra = sorted(set(value) - set(allowed)) if isinstance(value, Mapping) else []
        names = ", ".join(repr(name) for name in extra)
        hint = f"; allowed fields: {', '.join(allowed)}" if allowed else ""
        return f"{where}: unknown field {names}{hint}"
    if keyword == "type":
        wanted = error.validator_value
        wanted_list = wanted if isinstance(wanted, list) else [wanted]
        words = " or ".join(_TYPE_WORDS.get(str(w), str(w)) for w in wanted_list)
        got = _json_type(value)
        if not isinstance(value, Mapping | list | tuple) and value is not None:
            got += f" {_shown(value)}"
        return f"{where}: expected {words}, got {got}"
    if keyword in ("enum", "const"):
        options = error.validator_value if keyword == "enum" else [error.validator_value]
        return f"{where}: {_shown(value)} is not one of {', '.join(map(str, options))}"
    if keyword in ("minimum", "exclusiveMinimum"):
        return f"{where}: {value!r} is below the minimum {error.validator_value}"
    if keyword in ("maximum", "exclusiveMaximum"):
        return f"{where}: {value!r} is above the maximum {error.validator_value}"
    if keyword == "maxLength":
        return f"{where}: longer than {error.validator_value} characters"
    if keyword == "minLength":
        if error.validator_value == 1:
            return f"{where}: must not be empty"
        return f"{where}: shorter than {error.validator_value} characters"
    if keyword == "maxItems":
        return f"{where}: more than {error.validator_value} items"
    if keyword == "minItems":
        return f"{where}: needs at least {error.validator_value} item(s)"
    if keyword == "maxProperties":
        return f"{where}: more than {error.validator_value} fields"
    if keyword == "format":
        fmt = error.validator_value
        cause = f" ({error.cause})" if error.cause else ""
        article = "an" if str(fmt)[:1] in "aeiou" else "a"
        return f"{where}: {_shown(value)} is not {article} valid {fmt}{cause}"
    if keyword == "pattern":
        return f"{where}: {_shown(value)} does not match {error.validator_value}"
    return f"{where}: {error.message}"
