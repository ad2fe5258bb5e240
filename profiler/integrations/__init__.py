"""gpumem where users already are: framework callbacks and wrappers, one module per framework.

Each module imports its framework when it is imported (never ``import profiler``), and a missing
framework is one clear error saying what to install. :mod:`.unwrap` finds the real model and
optimizer behind the wrappers frameworks put around them (DDP, FSDP, ``torch.compile``,
accelerate's ``AcceleratedOptimizer``).
"""
