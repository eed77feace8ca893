"""hub/protocol/version.py: version numbers and the hub's minimum worker version."""

from __future__ import annotations

import pytest

from hub.protocol.version import (
    MIN_WORKER_VERSION,
    __version__,
    at_least,
    is_source_version,
    version_tuple,
    worker_too_old,
)


@pytest.mark.parametrize(
    ("text", "parts"),
    [
        ("1.2.3", (1, 2, 3)),
        ("1.2.3+local", (1, 2, 3)),
        ("1.2.3-rc1", (1, 2, 3)),
        ("0.0.0+source", (0, 0, 0)),
        ("v1.x.3", (1, 0, 3)),
        ("10", (10,)),
        ("", (0,)),
        ("banana", (0,)),
    ],
)
def test_version_tuple(text: str, parts: tuple[int, ...]) -> None:
    assert version_tuple(text) == parts


@pytest.mark.parametrize(
    ("version", "minimum", "expected"),
    [
        ("0.1.0", "0.1.0", True),
        ("0.1", "0.1.0", True),
        ("0.1.0", "0.1", True),
        ("0.1.1", "0.1", True),
        ("0.0.9", "0.1.0", False),
        ("0.10.0", "0.9.9", True),  # numbers, not strings
        ("0.9.9", "0.10.0", False),
        ("1.0.0+local", "1.0.0", True),
        ("0.2", "0.2.0.1", False),
        ("banana", "0.1.0", False),  # unparseable sorts low
    ],
)
def test_at_least(version: str, minimum: str, expected: bool) -> None:
    assert at_least(version, minimum) is expected


def test_is_source_version() -> None:
    assert is_source_version("0.0.0+source")
    assert not is_source_version("0.1.0")
    assert not is_source_version("0.1.0+sourced")


@pytest.mark.parametrize("minimum", [None, "", "   ", 5, ["9.0.0"], {"v": "9"}])
def test_no_minimum_lets_any_worker_claim(minimum: object) -> None:
    assert worker_too_old("0.0.1", minimum) is None


def test_a_worker_below_the_minimum_is_told_why() -> None:
    assert worker_too_old("0.0.9", " 0.1.0 ") == (
        "this worker (v0.0.9) is older than the hub's minimum v0.1.0; please update Couchfarm"
    )
    assert worker_too_old("dev", "0.1.0") is not None


def test_a_worker_at_or_above_the_minimum_may_claim() -> None:
    assert worker_too_old("0.1.0", "0.1") is None
    assert worker_too_old("0.2.0", "0.1.9") is None
    assert worker_too_old("1.0.0", "banana") is None  # a malformed minimum floors at 0


def test_a_source_tree_that_does_not_know_its_version_is_let_through() -> None:
    assert worker_too_old("0.0.0+source", "99.0.0") is None


def test_this_build_passes_its_own_default_minimum() -> None:
    assert worker_too_old(__version__, MIN_WORKER_VERSION) is None


@pytest.mark.parametrize("pre", ["0.2.0rc1", "0.2.0.dev3", "0.2.0a1", "0.2b1"])
def test_a_pre_release_sorts_below_its_release(pre: str) -> None:
    assert not at_least(pre, "0.2.0")
    assert at_least(pre, "0.1.9")
    assert at_least("0.2.0", pre)
