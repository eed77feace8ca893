"""``python -m desktop_worker.tray``: the tray app."""

import sys

from desktop_worker.tray.app import main

sys.exit(main())
