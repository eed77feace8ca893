"""The ``desktop-worker`` command."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from hub.version import __version__


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="desktop-worker")
    parser.add_argument("--version", action="version", version=f"couchfarm {__version__}")
    parser.parse_args(argv)
    return 0


if __name__ == "__main__":
    sys.exit(main())
