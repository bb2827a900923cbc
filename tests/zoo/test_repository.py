import numpy as np
import onnx
import pytest

from shoal.core import Family, RepositoryError, Variant
from shoal.core.errors import InvalidInputError
from shoal.zoo.fixture import random_feature_model
from shoal.zoo.repository import ModelRepository, inspect_model


def write_model(path, input_size_px=32, num_classes=10, channels=3, **names):
    rng = np.random.default_rng(0)
    conv = rng.normal(size=(4, channels, 3, 3)).astype(np.float32)
    model = random_feature_model(input_size_px, conv, rng.normal(size=(4, num_classes)), np.zeros(num_classes), **names)
    onnx.save(model, str(path))
    return path


def test_fixture_family_layout_and_measured_accuracy(fixture_repository_path):
    repository = ModelRepository(fixture_repository_path)
    assert repository.family_names() == ["fixture"]
    family = repository.load_family("fixture")
    assert (fixture_repository_path / "fixture" / "family.yaml").is_file()
    names = repository.variant_names("fixture")
    assert names == ["rf-16", "rf-32", "rf-64"]
    for name in names:
        variant = repository.load_variant("fixture", name)
        assert (fixture_repository_path / "fixture" / name / "model.onnx").is_file()
        assert variant.accuracy is not None and variant.accuracy > 1.5 / family.num_classes  # well above chance
        assert variant.parameter_count > 0
    images, labels = repository.load_validation("fixture")
    assert images.dtype == np.uint8 and images.shape[1:] == (3, 128, 128)
    assert len(labels) == len(images)


def test_add_variant_registers_a_checked_copy(writable_repository, tmp_path):
    model = write_model(tmp_path / "m.onnx", input_size_px=32)
    stored = writable_repository.add_variant(Variant(name="extra-32", family="fixture", input_size_px=32), model)
    assert stored.parameter_count == 4 * 3 * 9 + 4 * 10 + 10
    assert writable_repository.load_variant("fixture", "extra-32") == stored
    assert writable_repository.model_path("fixture", "extra-32").read_bytes() == model.read_bytes()


def test_duplicate_variant_is_refused(writable_repository, tmp_path):
    model = write_model(tmp_path / "m.onnx", input_size_px=16)
    with pytest.raises(RepositoryError, match="already exists"):
        writable_repository.add_variant(Variant(name="rf-16", family="fixture", input_size_px=16), model)


def test_a_variant_directory_made_meanwhile_is_a_repository_error_not_a_crash(writable_repository, tmp_path):
    """Two registrations of one name at once both pass the "already exists" check; the second to
    make the directory gets a RepositoryError (a 400 over HTTP), not FileExistsError (a 500), and
    the first's files are left alone."""
    model = write_model(tmp_path / "m.onnx", input_size_px=32)
    directory = writable_repository.variant_dir("fixture", "twin-32")
    directory.mkdir()  # what the other registration has done by the time this one writes
    (directory / "model.onnx").write_bytes(b"the other registration's file")
    with pytest.raises(RepositoryError, match="already exists"):
        writable_repository.add_variant(Variant(name="twin-32", family="fixture", input_size_px=32), model)
    assert (directory / "model.onnx").read_bytes() == b"the other registration's file"


@pytest.mark.parametrize(
    ("family", "variant"),
    [("fixture", "../../escape"), ("../fixture", "v"), ("fixture", "/abs"), ("fixture", "a/b")],
)
def test_names_that_escape_the_repository_are_refused(writable_repository, tmp_path, family, variant):
    model = write_model(tmp_path / "m.onnx")
    with pytest.raises((RepositoryError, ValueError), match="not a valid name"):
        writable_repository.add_variant(Variant.model_construct(name=variant, family=family, input_size_px=32, model_file="model.onnx", preprocessing={}), model)
    assert not (writable_repository.root.parent / "escape").exists()


def test_corrupt_and_non_onnx_files_are_refused(writable_repository, tmp_path):
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"this is not a protobuf" * 10)
    with pytest.raises(RepositoryError, match="not a loadable ONNX model"):
        writable_repository.add_variant(Variant(name="bad", family="fixture", input_size_px=32), garbage)
    truncated = tmp_path / "truncated.onnx"
    truncated.write_bytes(write_model(tmp_path / "ok.onnx").read_bytes()[:100])
    with pytest.raises(RepositoryError, match="not a loadable ONNX model"):
        writable_repository.add_variant(Variant(name="bad", family="fixture", input_size_px=32), truncated)
    with pytest.raises(RepositoryError, match="does not exist"):
        writable_repository.add_variant(Variant(name="bad", family="fixture", input_size_px=32), tmp_path / "none.onnx")
    assert "bad" not in writable_repository.variant_names("fixture")


@pytest.mark.parametrize(
    ("kwargs", "declared_px", "message"),
    [
        ({"num_classes": 7}, 32, "has 7 classes but family 'fixture' has 10"),
        ({"input_size_px": 48}, 32, "input is 48 px but the variant says input_size_px=32"),
        ({"input_name": "pixels"}, 32, "expects 'images'"),
        ({"output_name": "scores"}, 32, "expects 'logits'"),
        ({"channels": 1}, 32, "has 1 channels"),
    ],
)
def test_shape_and_name_mismatches_with_the_family_are_refused(writable_repository, tmp_path, kwargs, declared_px, message):
    model = write_model(tmp_path / "m.onnx", **kwargs)
    with pytest.raises(RepositoryError, match=message):
        writable_repository.add_variant(Variant(name="mismatch", family="fixture", input_size_px=declared_px), model)
    assert "mismatch" not in writable_repository.variant_names("fixture")


def test_static_batch_axis_is_refused(tmp_path):
    model = random_feature_model(16, np.ones((2, 3, 3, 3), np.float32), None, None)
    model.graph.input[0].type.tensor_type.shape.dim[0].dim_value = 1
    onnx.save(model, str(tmp_path / "static.onnx"))
    with pytest.raises(RepositoryError, match="dynamic batch axis"):
        inspect_model(tmp_path / "static.onnx")


def test_unknown_family_and_variant_name_what_exists(writable_repository):
    with pytest.raises(RepositoryError, match=r"family 'nope' is not in repository .*known: fixture"):
        writable_repository.load_family("nope")
    with pytest.raises(RepositoryError, match=r"variant 'nope' is not in family 'fixture' \(known: rf-16"):
        writable_repository.load_variant("fixture", "nope")


def test_remove_variant_deletes_its_folder(writable_repository):
    writable_repository.remove_variant("fixture", "rf-32")
    assert writable_repository.variant_names("fixture") == ["rf-16", "rf-64"]
    assert not (writable_repository.root / "fixture" / "rf-32").exists()
    with pytest.raises(RepositoryError):
        writable_repository.remove_variant("fixture", "rf-32")


def test_validation_set_is_checked_against_the_family(tmp_path):
    repository = ModelRepository(tmp_path)
    family = Family(name="f", num_classes=3, source_image_px=16)
    with pytest.raises(InvalidInputError, match="uint8 with shape"):
        repository.create_family(family, np.zeros((2, 3, 8, 8), np.uint8), np.zeros(2, np.int64))
    with pytest.raises(InvalidInputError, match=r"labels must lie in \[0, 2\]"):
        repository.create_family(family, np.zeros((2, 3, 16, 16), np.uint8), np.array([0, 5]))
    repository.create_family(family, np.zeros((2, 3, 16, 16), np.uint8), np.array([0, 2]))
    images, labels = repository.load_validation("f")
    assert images.shape == (2, 3, 16, 16) and labels.tolist() == [0, 2]
    with pytest.raises(RepositoryError, match="already exists"):
        repository.create_family(family)


def test_a_model_with_its_weights_in_separate_files_is_refused(tmp_path):
    """Only model.onnx is copied into the repository: such a variant registered, then could not load."""
    rng = np.random.default_rng(0)
    model = random_feature_model(16, rng.normal(size=(4, 3, 3, 3)).astype(np.float32), rng.normal(size=(4, 10)).astype(np.float32), np.zeros(10, np.float32))
    path = tmp_path / "external.onnx"
    onnx.save_model(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True, location="weights.bin", size_threshold=0)
    with pytest.raises(RepositoryError, match="weights are in separate files"):
        inspect_model(path)


def test_a_model_file_named_outside_the_repository_is_refused(writable_repository):
    variant_file = writable_repository.variant_dir("fixture", "rf-16") / "variant.yaml"
    variant_file.write_text(variant_file.read_text().replace("model_file: model.onnx", "model_file: ../../../outside.onnx"))
    with pytest.raises(RepositoryError, match="escapes the repository"):
        writable_repository.model_path("fixture", "rf-16")


def test_a_model_file_that_is_a_symlink_to_elsewhere_is_still_served(writable_repository, tmp_path):
    """The check is on the path as written: a repository whose model files link to a shared
    store keeps working (the resolved path is outside the repository)."""
    model = writable_repository.model_path("fixture", "rf-16")
    outside = tmp_path / "store" / "rf-16.onnx"
    outside.parent.mkdir()
    model.rename(outside)
    model.symlink_to(outside)
    assert writable_repository.model_path("fixture", "rf-16") == model
