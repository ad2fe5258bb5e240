"""Device sources: one module per source, each with a fake that ships in the package.

- :mod:`profiler.backends.cuda`: the CUDA caching allocator (the only module touching
  ``torch.cuda`` internals and private ``torch._C`` hooks).
- :mod:`profiler.backends.nvml`: NVML devices and processes (the only module importing ``pynvml``).
- :mod:`profiler.backends.host`: host memory through psutil and glibc.
- :mod:`profiler.backends.fake`: scripted devices, processes and allocator statistics.
"""
