"""Reading and writing the data model as JSON and YAML files.

Loading is a boundary: a file that is not valid YAML/JSON, or whose content does not fit the
model, becomes one InvalidInputError that names the file and the first bad field.
"""

from __future__ import annotations

import json
import os
import uuid
from pathlib import Path
from typing import TypeVar

import yaml
from pydantic import BaseModel, ValidationError

from shoal.core.errors import InvalidInputError

__all__ = ["dump_json", "dump_yaml", "load_json", "load_yaml", "describe_validation_error"]

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


def load_yaml(model: type[ModelT], path: Path) -> ModelT:
    try:
        data = yaml.safe_load(Path(path).read_text())
    except UnicodeDecodeError:
        raise InvalidInputError(f"{path}: is not UTF-8 text") from None
    except RecursionError:
        raise InvalidInputError(f"{path}: is nested too deep") from None
    except OSError as error:
        raise InvalidInputError(f"{path}: cannot be read ({error.strerror})") from None
    except yaml.YAMLError as error:
        raise InvalidInputError(f"{path}: is not valid YAML ({str(error).splitlines()[0]})") from None
    return _parse(model, data, str(path))


def load_json(model: type[ModelT], path: Path) -> ModelT:
    try:
        data = json.loads(Path(path).read_text())
    except UnicodeDecodeError:
        raise InvalidInputError(f"{path}: is not UTF-8 text") from None
    except RecursionError:
        raise InvalidInputError(f"{path}: is nested too deep") from None
    except OSError as error:
        raise InvalidInputError(f"{path}: cannot be read ({error.strerror})") from None
    except json.JSONDecodeError as error:
        raise InvalidInputError(f"{path}: is not valid JSON ({error.msg} at line {error.lineno})") from None
    return _parse(model, data, str(path))


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
