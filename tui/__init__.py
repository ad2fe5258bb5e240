"""gpumem's command line and Textual dashboard. Imports :mod:`profiler`, never the reverse."""
