"""Couchfarm hub: document model, state machine, CouchDB access, hub service and portal."""

from hub.protocol.version import __version__

__all__ = ["__version__"]
