"""``python -m profiler ...``: the ``gpumem`` command (``python -m profiler run script.py``)."""

from __future__ import annotations

import sys

from profiler.cli import main

sys.exit(main())
