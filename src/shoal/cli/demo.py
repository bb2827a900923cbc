"""`shoal demo`: the main job end to end on the built-in demo family.

Today it builds the family if it is missing, profiles the variants that have no profile on the
CPU, and prints the family's accuracy / latency table. The serving runtime and the adaptive
clients grow it into the end-to-end run described in DESIGN.md.
"""

from __future__ import annotations

from typing import Annotated

import typer

from shoal.cli._app import app
from shoal.cli._common import JsonOption, RepoOption, console, error_console, family_table, open_repository, print_json, progress_bar
from shoal.core.models import Device
from shoal.profiler.family import profile_family, profile_steps
from shoal.zoo import DEMO_FAMILY


@app.command("demo")
def demo(
    repo: RepoOption = None,
    repeats: Annotated[int, typer.Option("--repeats", min=1, help="Timed runs per batch size when profiling.")] = 30,
    json_output: JsonOption = False,
) -> None:
    """Build (if missing) and profile (if missing) the demo family, then show its trade-off."""
    from shoal.zoo.demo import build_demo_repository

    repository = open_repository(repo)
    device = Device.parse("cpu")
    if not repository.has_family(DEMO_FAMILY):
        error_console.print(f"building the demo family into {repository.root} (a few minutes, once)")
        with progress_bar() as bar:
            task = bar.add_task("building", total=1.0)
            build_demo_repository(
                repository.root, progress=lambda stage, fraction: bar.update(task, description=stage, completed=fraction)
            )
    missing = [name for name in repository.variant_names(DEMO_FAMILY) if repository.load_profile(DEMO_FAMILY, name, device) is None]
    if missing:
        validation = repository.load_validation(DEMO_FAMILY)
        batch_sizes = (1, 2, 4, 8, 16, 32)
        total = profile_steps(len(missing), batch_sizes, repeats, 0 if validation is None else len(validation[1]))
        with progress_bar() as bar:
            task = bar.add_task("profiling", total=total)
            profile_family(
                repository,
                DEMO_FAMILY,
                device,
                variant_names=missing,
                batch_sizes=batch_sizes,
                repeats=repeats,
                on_variant=lambda name: bar.update(task, description=f"profiling {name}"),
                progress=lambda steps: bar.advance(task, steps),
            )
    table, rows = family_table(repository, DEMO_FAMILY, device)
    if json_output:
        print_json({"family": DEMO_FAMILY, "repository": str(repository.root), "variants": rows})
    else:
        console.print(table)
