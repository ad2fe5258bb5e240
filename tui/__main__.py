"""``python -m tui`` runs ``gpumem top`` (also from a source tree that is not installed)."""

import sys

from profiler.cli import run_command
from tui import top

sys.exit(run_command("top", top, sys.argv[1:]))
