"""The Couchfarm tray app: a PySide6 face on the headless engine (``desktop_worker.engine``).

Layers (see docs/TRAY.md):

- :mod:`.bridge`: the only object that touches the engine. Engine events come in on engine
  threads and leave as Qt signals on the GUI thread; commands (pause, resume, drain,
  cancel, stop) run on one worker thread, so the GUI thread never waits on the network.
- :mod:`.pausing`: user pauses (1 hour, until tomorrow, until I resume) and the owner's
  conditions (idle, allowed hours, battery), on an injectable clock.
- :mod:`.tray`, :mod:`.window`, :mod:`.settings`, :mod:`.wizard`: the widgets.
- :mod:`.app`: wiring, ``build_app`` for tests and ``main`` for the ``desktop-worker`` command.

Nothing outside this package imports Qt; the engine never does.
"""

# Before any tray module imports PySide6: see lean.py (about 23 MB of the idle footprint).
from desktop_worker.tray import lean as _lean

_lean.prepare()
