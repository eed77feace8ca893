"""Shared fixtures. Qt runs offscreen; server-facing tests share one server per session."""

from __future__ import annotations

import os

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
