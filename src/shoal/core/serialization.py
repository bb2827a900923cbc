"""Reading and writing the data model as JSON and YAML files.

Loading is a boundary: a file that is not valid YAML/JSON, or whose content does not fit the
model, becomes one InvalidInputError that names the file and the first bad field.
"""

from __future__ import annotations

import json
import os
import uuid
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ValidationError

from shoal.core.errors import InvalidInputError

__all__ = [
    "describe_validation_error", "dump_json", "dump_yaml", "load_json", "load_yaml", "read_json_file", "read_text_file",
    "read_yaml_file",
]

ModelT = TypeVar("ModelT", bound=BaseModel)


def describe_validation_error(error: ValidationError) -> str:
    """The first problem of a pydantic error as `field.path: message`."""
    first = error.errors()[0]
    location = ".".join(str(part) for part in first["loc"]) or "<root>"
    return f"{location}: {first['msg']}"


def _parse(model: type[ModelT], data: object, source: str) -> ModelT:
    try:
        return model.model_validate(data)
    except ValidationError as error:
        raise InvalidInputError(
            f"{source}: field {describe_validation_error(error)} (fix the file and try again)"
        ) from None


def read_text_file(path: Path, *, fix: str = "") -> str:
    """The text of `path`. A file that cannot be read or is not UTF-8 is one InvalidInputError
    naming it; `fix` (e.g. "; check the --instance path") follows the reason it cannot be read."""
    try:
        return Path(path).read_text()
    except UnicodeDecodeError:
        raise InvalidInputError(f"{path}: is not UTF-8 text") from None
    except OSError as error:
        raise InvalidInputError(f"{path}: cannot be read ({error.strerror or error}){fix}") from None


def read_json_file(path: Path, *, fix: str = "") -> Any:
    """The JSON document in `path`, before any model sees it: every reader of a user's file
    (the data model, Inferno's and JellyBean's formats, edge instances) fails the same way."""
    text = read_text_file(path, fix=fix)
    try:
        return json.loads(text)
    except RecursionError:  # json's C decoder recurses per level of nesting
        raise InvalidInputError(f"{path}: is nested too deep") from None
    except json.JSONDecodeError as error:
        raise InvalidInputError(f"{path}: is not valid JSON ({error.msg} at line {error.lineno})") from None


def read_yaml_file(path: Path, *, fix: str = "") -> Any:
    """The YAML document in `path` (JSON is YAML too), as `read_json_file`."""
    text = read_text_file(path, fix=fix)
    try:
        return yaml.safe_load(text)
    except RecursionError:  # PyYAML's composer recurses per level of nesting
        raise InvalidInputError(f"{path}: is nested too deep") from None
    except yaml.YAMLError as error:
        raise InvalidInputError(f"{path}: is not valid YAML ({str(error).splitlines()[0]})") from None


def load_yaml(model: type[ModelT], path: Path) -> ModelT:
    return _parse(model, read_yaml_file(path), str(path))


def load_json(model: type[ModelT], path: Path) -> ModelT:
    return _parse(model, read_json_file(path), str(path))


def _write_atomically(path: Path, text: str) -> None:
    # Write then rename so that a crash never leaves a half-written file that later fails to load.
    # The temporary name is the writer's own: two writers of one file (a server profiling while
    # `shoal profile` runs) would otherwise write into, and rename, each other's file.
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        temporary.write_text(text)
        temporary.replace(path)
    finally:
        temporary.unlink(missing_ok=True)


def dump_yaml(value: BaseModel, path: Path) -> None:
    _write_atomically(Path(path), yaml.safe_dump(value.model_dump(mode="json"), sort_keys=False))


def dump_json(value: BaseModel, path: Path) -> None:
    _write_atomically(Path(path), value.model_dump_json(indent=2) + "\n")
