"""Couchfarm desktop worker: a headless engine and a PySide6 tray app on top of it."""
