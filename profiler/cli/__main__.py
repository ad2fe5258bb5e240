"""``python -m profiler.cli`` runs ``gpumem``."""

import sys

from profiler.cli import main

sys.exit(main())
