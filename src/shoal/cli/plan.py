"""`shoal plan ...`: one module per planner registers its subcommand here."""

from __future__ import annotations

# Each planner's command module registers `shoal plan <name>` and `shoal bench planner <name>`.
