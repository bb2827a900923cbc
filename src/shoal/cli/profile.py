"""`shoal profile`: measure latency and accuracy of a family's variants on a device."""

from __future__ import annotations

from typing import Annotated

import typer

from shoal.cli._app import app
from shoal.cli._common import JsonOption, RepoOption, console, family_table, open_repository, parse_batch_sizes, parse_device, print_json, profile_with_progress
from shoal.core.errors import InvalidInputError
from shoal.profiler.session import MAX_INTRA_OP_THREADS, check_device
from shoal.zoo import DEMO_FAMILY


@app.command("profile")
def profile(
    repo: RepoOption = None,
    family: Annotated[str, typer.Option("--family", help="Family to profile.")] = DEMO_FAMILY,
    variant: Annotated[list[str] | None, typer.Option("--variant", help="Only these variants (repeatable).")] = None,
    device: Annotated[str, typer.Option("--device", help="cpu or cuda:N.")] = "cpu",
    batch_sizes: Annotated[str, typer.Option("--batch-sizes", help="Comma-separated batch sizes.")] = "1,2,4,8,16",
    repeats: Annotated[int, typer.Option("--repeats", min=1, help="Timed runs per batch size.")] = 30,
    threads: Annotated[int, typer.Option("--threads", min=0, max=MAX_INTRA_OP_THREADS, help="Intra-op threads (0: all cores).")] = 0,
    json_output: JsonOption = False,
) -> None:
    """Latency per batch size, load time, memory and accuracy; writes profiles/<device>.json per variant."""
    repository = open_repository(repo)
    target = parse_device(device)
    check_device(target)
    sizes = parse_batch_sizes(batch_sizes)
    names = variant or repository.variant_names(family)
    if not names:
        raise InvalidInputError(f"family {family!r} has no variants in {repository.root} to profile")
    profiles = profile_with_progress(repository, family, target, names, sizes, repeats, threads or None)
    if json_output:
        print_json([p.model_dump(mode="json", exclude={"batches": {"__all__": {"samples_ms"}}}) for p in profiles])
    else:
        table, _ = family_table(repository, family, target)
        console.print(table)
