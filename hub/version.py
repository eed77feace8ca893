"""The one version number of Couchfarm, shown by both commands and written in worker docs."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("couchfarm")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+source"

MIN_WORKER_VERSION = "0.1.0"


def version_tuple(text: str) -> tuple[int, ...]:
    """'1.2.3+local' -> (1, 2, 3); unparseable parts count as 0 so old builds sort low."""
    core = text.split("+", 1)[0].split("-", 1)[0]
    parts: list[int] = []
    for piece in core.split("."):
        digits = "".join(ch for ch in piece if ch.isdigit())
        parts.append(int(digits) if digits else 0)
    return tuple(parts)
