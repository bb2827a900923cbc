"""`shoal zoo ...`: build the demo family, register, list and remove variants."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Annotated

import typer
from pydantic import ValidationError

from shoal.cli._app import zoo_app
from shoal.cli._common import JsonOption, RepoOption, console, error_console, family_table, open_repository, print_json, progress_bar
from shoal.core.errors import InvalidInputError
from shoal.core.models import Family, Variant
from shoal.core.serialization import describe_validation_error
from shoal.zoo import DEMO_FAMILY, default_repository_path
from shoal.zoo.repository import check_signature_matches, inspect_model, load_validation_file, read_validation_arrays


@zoo_app.command("build-demo")
def build_demo(
    out: Annotated[Path | None, typer.Option("--out", help="Repository to build into (default: the default repository).")] = None,
    force: Annotated[bool, typer.Option("--force", help="Rebuild even if the demo family exists.")] = False,
    quick: Annotated[bool, typer.Option("--quick", help="Tiny data and few variants: seconds, for smoke tests.")] = False,
) -> None:
    """Build the demo family: procedural dataset, >= 8 CNN variants trained with PyTorch, exported to ONNX."""
    from shoal.zoo.demo import build_demo_repository

    root = out or default_repository_path()
    with progress_bar() as progress:
        task = progress.add_task("building demo family", total=1.0)

        def report(stage: str, fraction: float) -> None:
            progress.update(task, description=stage, completed=fraction)

        family = build_demo_repository(root, force=force, quick=quick, progress=report)
    error_console.print(f"demo family {family.name!r} is ready in {root}")


@zoo_app.command("add")
def add(
    family: Annotated[str, typer.Option("--family", help="Family to add the variant to (created if new).")],
    variant: Annotated[str, typer.Option("--variant", help="Name of the new variant.")],
    model: Annotated[Path, typer.Option("--model", help="ONNX file: one float32 NCHW input with a dynamic batch axis.")],
    repo: RepoOption = None,
    validation: Annotated[
        Path | None,
        typer.Option("--validation", help="Folder with validation.npz (or the .npz itself): uint8 `images` NCHW and `labels`."),
    ] = None,
    description: Annotated[str, typer.Option("--description")] = "",
    json_output: JsonOption = False,
) -> None:
    """Check a model in ONNX Runtime, measure its accuracy and latency profile, and register it."""
    repository = open_repository(repo)
    signature = inspect_model(model)
    validation_path = None
    if validation is not None:
        validation_path = validation / "validation.npz" if validation.is_dir() else validation
        if not validation_path.is_file():
            raise InvalidInputError(f"--validation: {validation_path} does not exist (give a folder holding validation.npz or the file)")
    new_family = not repository.has_family(family)
    if not new_family:
        family_spec = repository.load_family(family)
        data = load_validation_file(validation_path, family_spec) if validation_path else repository.load_validation(family)
    else:
        if signature.output_shape[1] < 2:
            raise InvalidInputError(f"{model}: output {signature.output_name!r} must declare its number of classes to create a family")
        images, labels = read_validation_arrays(validation_path) if validation_path else (None, None)
        try:
            family_spec = Family(
                name=family,
                input_name=signature.input_name,
                input_channels=signature.input_shape[1],
                output_name=signature.output_name,
                num_classes=signature.output_shape[1],
                source_image_px=images.shape[-1] if images is not None else signature.input_size_px,
            )
        except ValidationError as error:  # a channel axis left dynamic, images too small, ...
            raise InvalidInputError(f"--model {model} / --validation: the new family's {describe_validation_error(error)}") from None
        data = (images, labels) if images is not None else None

    try:
        spec = Variant(name=variant, family=family, input_size_px=signature.input_size_px, description=description)
    except ValidationError as error:
        raise InvalidInputError(f"--variant {variant!r}: {error.errors()[0]['msg']}") from None
    # Everything checked before anything is measured or written: a refused add leaves the
    # repository as it was (a new family's files used to stay behind, holding no variant).
    check_signature_matches(family_spec, signature, spec, model)
    repository.check_absent(family, variant)
    if new_family:  # its validation set is checked here
        family_spec = repository.create_family(family_spec, *(data or (None, None)))
    from shoal.profiler.measure import DEFAULT_BATCH_SIZES
    from shoal.profiler.session import available_devices
    from shoal.zoo.register import measure_and_add

    try:
        stored, _ = measure_and_add(repository, family_spec, spec, model, available_devices(), data,
                                    profile_batch_sizes=DEFAULT_BATCH_SIZES, accuracy_threads=None)
    except BaseException:
        if new_family:  # its first variant failed: the family goes too
            shutil.rmtree(repository.family_dir(family), ignore_errors=True)
        raise
    if json_output:
        print_json(stored.model_dump(mode="json"))
    else:
        accuracy = "not measured (no validation set)" if stored.accuracy is None else f"{stored.accuracy:.1%}"
        console.print(f"registered {family}/{variant}: {stored.input_size_px} px, accuracy {accuracy}")


@zoo_app.command("list")
def list_variants(
    repo: RepoOption = None,
    family: Annotated[str | None, typer.Option("--family", help="Only this family.")] = None,
    device: Annotated[str, typer.Option("--device", help="Whose profiles to show.")] = "cpu",
    json_output: JsonOption = False,
) -> None:
    """Variants with input size, accuracy, p50 latency at batch 1 and parameter count."""
    from shoal.cli._common import parse_device

    repository = open_repository(repo)
    families = [family] if family else repository.family_names()
    if family:
        repository.load_family(family)  # a clear error for an unknown family
    all_rows = []
    for name in families:
        table, rows = family_table(repository, name, parse_device(device))
        all_rows += rows
        if not json_output:
            console.print(table)
    if json_output:
        print_json(all_rows)
    elif not families:
        hint = " (run `shoal zoo build-demo`)" if repository.root == default_repository_path().resolve() else ""
        console.print(f"repository {repository.root} holds no families{hint}")


@zoo_app.command("remove")
def remove(
    family: Annotated[str, typer.Option("--family")],
    variant: Annotated[str, typer.Option("--variant")],
    repo: RepoOption = None,
) -> None:
    """Remove a variant (its model and profiles) from the repository."""
    repository = open_repository(repo)
    repository.remove_variant(family, variant)
    console.print(f"removed {family}/{variant}")


__all__ = ["DEMO_FAMILY"]
