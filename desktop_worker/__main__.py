"""``python -m desktop_worker``: the ``desktop-worker`` command.

Prefer this to ``python -m desktop_worker.cli``: multiprocessing re-imports a main module
given by name in every forkserver child, and the runner's forkserver has already imported
``desktop_worker.cli``, so each run would warn that it was "found in sys.modules". A
package's ``__main__`` is never re-imported.
"""

import sys

from desktop_worker.cli import main

sys.exit(main())
