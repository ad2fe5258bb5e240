"""One module per ``gpumem`` subcommand: ``HELP``, ``add_arguments(parser)``, ``run(args)``."""
