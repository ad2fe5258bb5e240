"""``python -m profiler.gpucheck``: run the GPU kit (see :mod:`profiler.gpucheck`)."""

from __future__ import annotations

import sys

from profiler.gpucheck.run import main

sys.exit(main())
