"""gpumem's Textual dashboard, ``gpumem top``. Imports :mod:`profiler`, never the reverse.

The command joins ``gpumem`` through the ``gpumem.commands`` entry-point group (pyproject.toml:
``top = "tui.top"``); the rest of the ``gpumem`` command is :mod:`profiler.cli`.
"""
