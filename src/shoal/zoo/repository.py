"""The on-disk model repository, laid out in the spirit of Triton's:

    <root>/<family>/family.yaml                 task, metric, input/output tensors, classes
    <root>/<family>/validation.npz              uint8 `images` (NCHW, source size), int64 `labels`
    <root>/<family>/<variant>/model.onnx
    <root>/<family>/<variant>/variant.yaml      input size, accuracy, preprocessing, size
    <root>/<family>/<variant>/profiles/<device>.json

The repository is the boundary between the file system and the typed model: every name is
checked against a conservative alphabet and every resolved path must stay under the root, so a
name can never escape it; every model is opened in ONNX Runtime and its signature checked
against the family before it is registered.
"""

from __future__ import annotations

import os
import shutil
import uuid
from pathlib import Path

import numpy as np

from shoal.core.errors import InvalidInputError, RepositoryError
from shoal.core.models import Device, Family, Profile, Variant, check_name
from shoal.core.serialization import dump_json, dump_yaml, load_json, load_yaml

__all__ = ["ModelRepository", "ModelSignature", "FAMILY_FILE", "VARIANT_FILE", "check_signature_matches", "inspect_model"]

FAMILY_FILE = "family.yaml"
VARIANT_FILE = "variant.yaml"
MODEL_FILE = "model.onnx"


class ModelSignature:
    """What an ONNX file declares, reduced to what a family requires of it."""

    def __init__(self, input_name: str, input_shape: tuple[int, ...], output_name: str, output_shape: tuple[int, ...]):
        self.input_name = input_name
        self.input_shape = input_shape
        self.output_name = output_name
        self.output_shape = output_shape

    @property
    def input_size_px(self) -> int:
        return self.input_shape[2]


def _has_external_data(path: Path) -> bool:
    """Whether a model keeps tensors in files beside it (ONNX's external data)."""
    import onnx
    from onnx.external_data_helper import uses_external_data

    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception:  # not ONNX at all: ONNX Runtime's refusal below says so
        return False
    return any(uses_external_data(tensor) for tensor in model.graph.initializer)


def inspect_model(model_path: Path) -> ModelSignature:
    """Open a model on the CPU and return its signature, refusing anything shoal cannot batch."""
    from shoal.profiler.session import create_session, tensor_specs  # ORT only when needed

    path = Path(model_path)
    if not path.is_file():
        raise RepositoryError(f"model file {path} does not exist" + (" (it is a folder: give the .onnx file)" if path.is_dir() else ""))
    if _has_external_data(path):
        raise RepositoryError(
            f"{path}: its weights are in separate files, which the repository would not copy; "
            "save the model as one file (onnx.save_model(model, path, save_as_external_data=False))"
        )
    session = create_session(path, Device.parse("cpu"), intra_op_threads=1)
    inputs, outputs = tensor_specs(session)
    if len(inputs) != 1:
        raise RepositoryError(f"{path}: a variant must have exactly one input, found {len(inputs)}")
    if not outputs:
        raise RepositoryError(f"{path}: the model has no outputs")
    image, logits = inputs[0], outputs[0]
    if image.dtype != "float32" or len(image.shape) != 4:
        raise RepositoryError(
            f"{path}: input {image.name!r} must be float32 NCHW (rank 4), found {image.dtype} with shape {list(image.shape)}"
        )
    if image.shape[0] != -1:
        raise RepositoryError(
            f"{path}: input {image.name!r} must have a dynamic batch axis (export with dynamic_axes), found {image.shape[0]}"
        )
    if image.shape[2] <= 0 or image.shape[2] != image.shape[3]:
        raise RepositoryError(f"{path}: input {image.name!r} must be a fixed square image, found {list(image.shape)}")
    if len(logits.shape) != 2:
        raise RepositoryError(f"{path}: output {logits.name!r} must be [batch, classes], found {list(logits.shape)}")
    return ModelSignature(image.name, image.shape, logits.name, logits.shape)


class ModelRepository:
    """A folder of families and their variants. Cheap to construct; reads files on demand."""

    def __init__(self, root: Path | str):
        self.root = Path(root).expanduser().resolve()

    # -- paths -------------------------------------------------------------------------------
    def _inside(self, *parts: str) -> Path:
        path = self.root.joinpath(*parts).resolve()
        if path != self.root and self.root not in path.parents:
            raise RepositoryError(f"path {'/'.join(parts)!r} escapes the repository {self.root}")
        return path

    def family_dir(self, family: str) -> Path:
        return self._inside(_safe(family, "family name"))

    def variant_dir(self, family: str, variant: str) -> Path:
        return self._inside(_safe(family, "family name"), _safe(variant, "variant name"))

    def model_path(self, family: str, variant: str) -> Path:
        # Inside the repository, as written (a variant.yaml naming ../../elsewhere.onnx is
        # refused), not as resolved: a model file that is a symlink to elsewhere stays allowed.
        path = Path(os.path.normpath(self.variant_dir(family, variant) / self.load_variant(family, variant).model_file))
        if self.root not in path.parents:
            raise RepositoryError(f"model_file of {family}/{variant} escapes the repository {self.root}")
        return path

    def profile_path(self, family: str, variant: str, device: Device) -> Path:
        return self.variant_dir(family, variant) / "profiles" / f"{device.file_stem}.json"

    # -- families ----------------------------------------------------------------------------
    def family_names(self) -> list[str]:
        if not self.root.is_dir():
            return []
        return sorted(entry.name for entry in self.root.iterdir() if (entry / FAMILY_FILE).is_file())

    def has_family(self, family: str) -> bool:
        return (self.family_dir(family) / FAMILY_FILE).is_file()

    def load_family(self, family: str) -> Family:
        path = self.family_dir(family) / FAMILY_FILE
        if not path.is_file():
            known = ", ".join(self.family_names()) or "none"
            raise RepositoryError(f"family {family!r} is not in repository {self.root} (known: {known})")
        return load_yaml(Family, path)

    def create_family(
        self,
        family: Family,
        validation_images: np.ndarray | None = None,
        validation_labels: np.ndarray | None = None,
    ) -> Family:
        if self.has_family(family.name):
            raise RepositoryError(f"family {family.name!r} already exists in {self.root}")
        if validation_images is not None:
            _check_validation(family, validation_images, validation_labels)  # before anything is written
        directory = self.family_dir(family.name)
        self.root.mkdir(parents=True, exist_ok=True)
        try:
            # Never into a folder that is there already: it holds no family.yaml, so it is not
            # shoal's, and a failed first variant removes the family's folder with everything in it.
            directory.mkdir()
        except FileExistsError:
            raise RepositoryError(
                f"{directory} exists but holds no family; move it out of the repository or pick another family name"
            ) from None
        if validation_images is not None:
            np.savez_compressed(directory / "validation.npz", images=validation_images, labels=validation_labels)
        else:
            family = family.model_copy(update={"validation_file": None})
        dump_yaml(family, directory / FAMILY_FILE)
        return family

    def load_validation(self, family: str) -> tuple[np.ndarray, np.ndarray] | None:
        spec = self.load_family(family)
        if spec.validation_file is None:
            return None
        path = self._inside(family, spec.validation_file)
        return load_validation_file(path, spec)

    # -- variants ----------------------------------------------------------------------------
    def variant_names(self, family: str) -> list[str]:
        directory = self.family_dir(family)
        if not directory.is_dir():
            return []
        # A hidden folder is not a variant: one being removed (`remove_variant`) or written.
        return sorted(entry.name for entry in directory.iterdir() if not entry.name.startswith(".") and (entry / VARIANT_FILE).is_file())

    def load_variant(self, family: str, variant: str) -> Variant:
        path = self.variant_dir(family, variant) / VARIANT_FILE
        if not path.is_file():
            known = ", ".join(self.variant_names(family)) or "none"
            raise RepositoryError(f"variant {variant!r} is not in family {family!r} (known: {known})")
        return load_yaml(Variant, path)

    def variants(self, family: str) -> list[Variant]:
        return [self.load_variant(family, name) for name in self.variant_names(family)]

    def add_variant(
        self,
        variant: Variant,
        model_path: Path,
    ) -> Variant:
        """Check a model against its family and copy it into the repository.

        The signature check runs before anything is written, so a refused model leaves the
        repository as it was.
        """
        family = self.load_family(variant.family)
        directory = self.variant_dir(variant.family, variant.name)
        self.check_absent(variant.family, variant.name)
        signature = inspect_model(model_path)
        check_signature_matches(family, signature, variant, model_path)
        parameter_count = variant.parameter_count or count_parameters(model_path)
        stored = variant.model_copy(update={"model_file": MODEL_FILE, "parameter_count": parameter_count})
        try:
            directory.mkdir(parents=True, exist_ok=False)
        except FileExistsError:  # registered meanwhile (two registrations of one name at once), or a leftover
            raise RepositoryError(
                f"variant {variant.name!r} of family {variant.family!r}: its directory {directory} already exists "
                "(registered meanwhile, or left by an earlier failed add); pick another name or remove that directory"
            ) from None
        try:
            shutil.copyfile(model_path, directory / MODEL_FILE)
            dump_yaml(stored, directory / VARIANT_FILE)
        except BaseException:
            shutil.rmtree(directory, ignore_errors=True)
            raise
        return stored

    def check_absent(self, family: str, variant: str) -> None:
        """RepositoryError if `family` has a variant named `variant` already: callers that
        measure a model before adding it check first, so that a duplicate costs no measurement."""
        if (self.variant_dir(family, variant) / VARIANT_FILE).exists():
            raise RepositoryError(f"variant {variant!r} already exists in family {family!r}; remove it first or pick another name")

    def update_variant(self, variant: Variant) -> None:
        """Rewrite variant.yaml of an existing variant (e.g. after measuring its accuracy)."""
        self.load_variant(variant.family, variant.name)
        dump_yaml(variant, self.variant_dir(variant.family, variant.name) / VARIANT_FILE)

    def remove_variant(self, family: str, variant: str) -> None:
        self.load_variant(family, variant)
        # Out of sight first, in one rename: an interrupted removal leaves no half a variant
        # (a variant.yaml without its model) for the server to find.
        directory = self.variant_dir(family, variant)
        doomed = directory.with_name(f".{directory.name}.removing.{uuid.uuid4().hex[:8]}")
        directory.rename(doomed)
        shutil.rmtree(doomed)

    # -- profiles ----------------------------------------------------------------------------
    def load_profile(self, family: str, variant: str, device: Device) -> Profile | None:
        path = self.profile_path(family, variant, device)
        return load_json(Profile, path) if path.is_file() else None

    def save_profile(self, profile: Profile) -> Path:
        path = self.profile_path(profile.family, profile.variant, Device.parse(profile.device))
        dump_json(profile, path)
        return path


def _safe(name: str, what: str) -> str:
    try:
        return check_name(name, what)
    except ValueError as error:
        raise RepositoryError(str(error)) from None


def check_signature_matches(family: Family, signature: ModelSignature, variant: Variant, model_path: Path) -> None:
    if signature.input_name != family.input_name:
        raise RepositoryError(
            f"{model_path}: input is named {signature.input_name!r} but family {family.name!r} expects {family.input_name!r}"
        )
    if signature.input_shape[1] != family.input_channels:
        raise RepositoryError(
            f"{model_path}: input has {signature.input_shape[1]} channels but family {family.name!r} has {family.input_channels}"
        )
    if signature.input_size_px != variant.input_size_px:
        raise RepositoryError(
            f"{model_path}: input is {signature.input_size_px} px but the variant says input_size_px={variant.input_size_px}"
        )
    if signature.input_size_px > family.source_image_px:
        raise RepositoryError(
            f"{model_path}: input of {signature.input_size_px} px is larger than the family's source frames "
            f"({family.source_image_px} px); shoal only downscales"
        )
    if signature.output_name != family.output_name:
        raise RepositoryError(
            f"{model_path}: output is named {signature.output_name!r} but family {family.name!r} expects {family.output_name!r}"
        )
    if signature.output_shape[1] not in (-1, family.num_classes):
        raise RepositoryError(
            f"{model_path}: output has {signature.output_shape[1]} classes but family {family.name!r} has {family.num_classes}"
        )


def _check_validation(family: Family, images: np.ndarray, labels: np.ndarray | None) -> None:
    expected = (family.input_channels, family.source_image_px, family.source_image_px)
    if images.dtype != np.uint8 or images.ndim != 4 or tuple(images.shape[1:]) != expected:
        raise InvalidInputError(
            f"validation images must be uint8 with shape (N, {', '.join(map(str, expected))}), "
            f"found {images.dtype} {tuple(images.shape)}"
        )
    if labels is None or labels.ndim != 1 or len(labels) != len(images):
        raise InvalidInputError("validation labels must be a 1-d array with one label per image")
    if len(labels) and (labels.min() < 0 or labels.max() >= family.num_classes):
        raise InvalidInputError(f"validation labels must lie in [0, {family.num_classes - 1}]")


def load_validation_file(path: Path, family: Family) -> tuple[np.ndarray, np.ndarray]:
    """Read and check a validation npz (`images` uint8 NCHW at the source size, `labels`)."""
    images, labels = read_validation_arrays(path)
    _check_validation(family, images, labels)
    return images, labels


def read_validation_arrays(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """The `images` and integer `labels` of a validation npz, unchecked against any family (a new
    family takes its source image size from them); every problem with the file names it."""
    try:
        archive = np.load(path, allow_pickle=False)
        if isinstance(archive, np.lib.npyio.NpzFile):
            with archive:
                images, labels = archive["images"], archive["labels"]
    except FileNotFoundError:
        raise InvalidInputError(f"validation file {path} does not exist") from None
    except KeyError as error:
        raise InvalidInputError(f"validation file {path} has no array {error} (needs 'images' and 'labels')") from None
    except (OSError, ValueError, EOFError) as error:
        raise InvalidInputError(f"validation file {path} is not a readable npz archive ({error})") from None
    if not isinstance(archive, np.lib.npyio.NpzFile):  # a .npy holds one array
        raise InvalidInputError(f"validation file {path} is one array; save 'images' and 'labels' with numpy.savez")
    if images.ndim != 4:
        raise InvalidInputError(f"validation file {path}: 'images' must be NCHW (rank 4), found shape {list(images.shape)}")
    if labels.dtype.kind not in "iu":  # 3.5 would be cut to 3, "cat" would not convert
        raise InvalidInputError(f"validation file {path}: 'labels' must be integers, found {labels.dtype}")
    return images, labels.astype(np.int64)


def count_parameters(model_path: Path) -> int:
    """Number of weights stored in the model's initializers."""
    import onnx

    model = onnx.load(str(model_path), load_external_data=False)
    total = 0
    for initializer in model.graph.initializer:
        count = 1
        for dim in initializer.dims:
            count *= dim
        total += count
    return total
