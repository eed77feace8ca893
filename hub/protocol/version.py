"""The one version number of Couchfarm, shown by both commands and written in worker docs."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("couchfarm")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+source"

MIN_WORKER_VERSION = "0.1.0"


def version_tuple(text: str) -> tuple[int, ...]:
    """'1.2.3+local' -> (1, 2, 3); unparseable parts count as 0 so old builds sort low.

    A pre-release or dev build sorts below its release: '0.2.0rc1' -> (0, 2, 0, -1), so it
    never passes a minimum of 0.2.0 or above."""
    core = text.split("+", 1)[0].split("-", 1)[0]
    parts: list[int] = []
    for piece in core.split("."):
        lead = piece[: len(piece) - len(piece.lstrip("0123456789"))]
        marker = piece.startswith(("dev", "rc", "a", "b", "pre")) and bool(parts)
        if (lead and lead != piece) or marker:  # '0rc1', 'dev3': below the release
            if lead:
                parts.append(int(lead))
            parts.append(-1)
            break
        digits = "".join(ch for ch in piece if ch.isdigit())  # 'v1', 'x': as before
        parts.append(int(digits) if digits else 0)
    return tuple(parts)


# The hub's policy document in the live database: ``{"_id": "hub:policy", "type": "hub",
# "min_worker_version": "0.1.0"}``. ``hub init`` writes it; a worker reads it at start.
POLICY_DOC_ID = "hub:policy"


def is_source_version(text: str) -> bool:
    """True for the fallback of a source tree that was never installed (version unknown)."""
    return text.endswith("+source")


def at_least(version: str, minimum: str) -> bool:
    """``version >= minimum`` by :func:`version_tuple`, missing parts as 0 (0.1 == 0.1.0)."""
    mine, floor = version_tuple(version), version_tuple(minimum)
    width = max(len(mine), len(floor))
    return mine + (0,) * (width - len(mine)) >= floor + (0,) * (width - len(floor))


def worker_too_old(worker_version: str, minimum: object) -> str | None:
    """Why a worker of ``worker_version`` must not claim under ``minimum``, or None.

    ``minimum`` comes from the hub's policy document: None, an empty or a non-text value
    means no minimum. A source tree that was never installed does not know its version and
    is let through (the frozen bundle and installed packages always know theirs).
    """
    if not isinstance(minimum, str) or not minimum.strip():
        return None
    minimum = minimum.strip()
    if is_source_version(worker_version):
        return None
    if at_least(worker_version, minimum):
        return None
    return (
        f"this worker (v{worker_version}) is older than the hub's minimum v{minimum}; "
        "please update Couchfarm"
    )
