"""Helpers shared by command modules: the console, option types and table rendering."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from shoal.core.errors import InvalidInputError
from shoal.core.models import Device
from shoal.core.serialization import read_yaml_file
from shoal.zoo import ModelRepository, default_repository_path

console = Console()
error_console = Console(stderr=True)

RepoOption = Annotated[
    Path | None,
    typer.Option("--repo", help="Model repository (default: $SHOAL_REPO or ~/.cache/shoal/repo).", show_default=False),
]
JsonOption = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON instead of a table.")]


def open_repository(repo: Path | None) -> ModelRepository:
    root = repo or default_repository_path()
    if root.exists() and not root.is_dir():
        raise InvalidInputError(f"--repo {root}: is a file; give the repository's folder (created if new)")
    return ModelRepository(root)


def check_output_file(path: Path | None, option: str) -> None:
    """Before a long run, not after it: a results file whose path is a folder, lies under a
    file, or cannot be written would lose the run's results to a traceback at the end. Creates
    nothing (the run makes the folders when it writes)."""
    if path is None:
        return
    if path.is_dir():
        raise InvalidInputError(f"{option} {path}: is a folder; give a file name")
    if any(parent.exists() and not parent.is_dir() for parent in path.parents):
        raise InvalidInputError(f"{option} {path}: a part of the path is a file, not a folder")
    _check_writable(path.parent, option, path)


def check_output_folder(path: Path | None, option: str) -> None:
    """`check_output_file` for a folder the run writes into."""
    if path is None:
        return
    if any(part.exists() and not part.is_dir() for part in (path, *path.parents)):
        raise InvalidInputError(f"{option} {path}: is (or lies under) a file; give a folder")
    _check_writable(path, option, path)


def _check_writable(folder: Path, option: str, given: Path) -> None:
    """A file can be made in `folder`, or (where it does not exist yet) in its nearest existing
    ancestor, which is where the run's first folder will be made."""
    existing = next(candidate for candidate in (folder, *folder.parents) if candidate.exists())
    try:
        with tempfile.TemporaryFile(dir=existing):
            pass
    except OSError as error:
        raise InvalidInputError(f"{option} {given}: cannot write there ({error.strerror}); give a path in a folder you may write to") from None


def parse_device(name: str) -> Device:
    try:
        return Device.parse(name)
    except ValueError as error:
        raise InvalidInputError(f"--device: {error}") from None


def parse_batch_sizes(text: str) -> list[int]:
    from shoal.profiler.measure import MAX_PROFILE_BATCH_SIZE

    try:
        sizes = sorted({int(part) for part in text.split(",") if part.strip()})
    except ValueError:
        raise InvalidInputError(f"--batch-sizes must be comma-separated integers like 1,2,4,8, got {text!r}") from None
    if not sizes or sizes[0] < 1 or sizes[-1] > MAX_PROFILE_BATCH_SIZE:
        raise InvalidInputError(f"--batch-sizes must be integers from 1 to {MAX_PROFILE_BATCH_SIZE}, got {text!r}")
    return sizes


def write_json(path: Path, value: Any) -> None:
    """A results file: the folder is created, the JSON indented for people reading diffs."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(value, indent=2) + "\n")


def print_json(value: Any) -> None:
    # Plain print, not rich: other programs parse this, so no markup or wrapping.
    print(json.dumps(value, indent=2, default=str))


def progress_bar(transient: bool = False) -> Progress:
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=error_console,
        transient=transient,
    )


def family_table(repository: ModelRepository, family: str, device: Device) -> tuple[Table, list[dict[str, Any]]]:
    """The family's variants with accuracy and profiled latency, as a rich table and as rows."""
    rows = []
    for variant in repository.variants(family):
        profile = repository.load_profile(family, variant.name, device)
        batch_one = profile.batches.get(1) if profile else None
        rows.append(
            {
                "family": family,
                "variant": variant.name,
                "input_size_px": variant.input_size_px,
                "accuracy": variant.accuracy,
                "p50_ms_batch_1": batch_one.p50_ms if batch_one else None,
                "peak_throughput_rps": round(profile.peak_throughput_rps(), 1) if profile else None,
                "parameter_count": variant.parameter_count,
                "multiply_adds": variant.multiply_adds,
                "device": device.name,
                "profiled": profile is not None,
            }
        )
    table = Table(title=f"family {family!r} on {device.name}")
    for column, justify in [
        ("variant", "left"),
        ("input px", "right"),
        ("accuracy", "right"),
        ("p50 ms @1", "right"),
        ("peak img/s", "right"),
        ("params", "right"),
        ("MACs", "right"),
    ]:
        table.add_column(column, justify=justify)
    for row in rows:
        table.add_row(
            row["variant"],
            str(row["input_size_px"]),
            "-" if row["accuracy"] is None else f"{row['accuracy']:.1%}",
            "-" if row["p50_ms_batch_1"] is None else f"{row['p50_ms_batch_1']:.3f}",
            "-" if row["peak_throughput_rps"] is None else f"{row['peak_throughput_rps']:.0f}",
            f"{row['parameter_count']:,}",
            f"{row['multiply_adds'] / 1e6:.1f}M" if row["multiply_adds"] else "-",
        )
    return table, rows


def profile_with_progress(repository: ModelRepository, family: str, device: Device, names, batch_sizes, repeats: int, threads: int | None = None):
    """Profile the named variants behind one rich progress bar; returns the profiles."""
    from shoal.profiler.family import profile_family, profile_steps

    validation = repository.load_validation(family)
    total = profile_steps(len(names), batch_sizes, repeats, 0 if validation is None else len(validation[1]))
    with progress_bar() as bar:
        task = bar.add_task("profiling", total=total)
        return profile_family(
            repository,
            family,
            device,
            variant_names=names,
            batch_sizes=batch_sizes,
            repeats=repeats,
            intra_op_threads=threads,
            on_variant=lambda name: bar.update(task, description=f"profiling {name}"),
            progress=lambda steps: bar.advance(task, steps),
        )


def read_prices(path: Path, option: str = "--prices") -> dict[str, float]:
    """A YAML price table `device: usd_per_hour`; errors name the option and the fix."""
    try:
        data = read_yaml_file(path)
    except InvalidInputError as error:
        raise InvalidInputError(f"{option} {error}") from None
    if not isinstance(data, dict) or not all(
        isinstance(k, str) and isinstance(v, (int, float)) and not isinstance(v, bool) and v >= 0 for k, v in data.items()
    ):
        raise InvalidInputError(f"{option} {path}: write one 'device: usd_per_hour' line per device, e.g. 'cpu: 0.048'")
    return {k: float(v) for k, v in data.items()}
