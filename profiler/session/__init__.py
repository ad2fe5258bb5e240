"""The on-disk session stream that ``gpumem top`` and the exporter read.

- :mod:`~profiler.session.layout`: the home, the sessions folder, directory names (both ways),
  the file names, pruning of old sessions;
- :mod:`~profiler.session.schema`: schema v1, how records become lines and files;
- :mod:`~profiler.session.atomic`: the one atomic writer;
- :mod:`~profiler.session.writer`: :class:`~profiler.session.writer.SessionWriter`, an observer
  of a run that writes its stream;
- :mod:`~profiler.session.files`: the one place readers open session files (and configs and
  reports): regular files only, bounded, numbers and nesting read defensively;
- :mod:`~profiler.session.fields`: the records a poll returns and the defensive field readers;
- :mod:`~profiler.session.reader`: :class:`~profiler.session.reader.SessionReader`, which finds
  and tails sessions.

Import from those modules; this package's ``__init__`` imports nothing, so reaching for the
atomic writer does not load the stream writer.
"""
