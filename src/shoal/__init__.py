"""shoal: SLO-aware, model-less inference serving.

The public surface is deliberately small: the typed data model (`shoal.core`), the model
repository (`shoal.zoo`), the profiler (`shoal.profiler`) and the pure planners
(`shoal.planner`). Everything else is reached through the `shoal` command.
"""

__version__ = "0.1.0"
