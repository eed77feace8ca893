"""Entry point of the frozen bundle (both executables): ``desktop_worker.cli.main``.

``freeze_support()`` comes first: a run's child process is this same executable started by
multiprocessing (spawn), and must become the child before anything else is imported.
"""

import multiprocessing
import sys

if __name__ == "__main__":
    multiprocessing.freeze_support()
    from desktop_worker.cli import main

    sys.exit(main())
