"""The widgets of ``gpumem top``.

:mod:`tui.widgets.render` holds the Rich renderables (no Textual: ``--once`` uses them without a
terminal); :mod:`tui.widgets.panels` holds the Textual widgets that show them.
"""
