import json
import shutil
import subprocess
import sys

import numpy as np
import onnx

from shoal.cli import main
from shoal.zoo.fixture import random_feature_model


def run_cli(capsys, *args):
    code = main(list(args))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_zoo_list_json_shows_every_variant(capsys, fixture_repository_path):
    code, out, _ = run_cli(capsys, "zoo", "list", "--repo", str(fixture_repository_path), "--json")
    assert code == 0
    rows = json.loads(out)
    assert [row["variant"] for row in rows] == ["rf-16", "rf-32", "rf-64"]
    assert all(row["accuracy"] is not None and row["parameter_count"] > 0 for row in rows)


def test_zoo_list_defaults_to_shoal_repo_env(capsys, fixture_repository_path, monkeypatch):
    monkeypatch.setenv("SHOAL_REPO", str(fixture_repository_path))
    code, out, _ = run_cli(capsys, "zoo", "list", "--json")
    assert code == 0 and len(json.loads(out)) == 3


def test_zoo_add_then_remove(capsys, writable_repository, tmp_path):
    rng = np.random.default_rng(1)
    path = tmp_path / "new.onnx"
    onnx.save(random_feature_model(48, rng.normal(size=(6, 3, 3, 3)).astype(np.float32), rng.normal(size=(6, 10)), np.zeros(10)), str(path))
    repo = str(writable_repository.root)
    code, out, err = run_cli(capsys, "zoo", "add", "--repo", repo, "--family", "fixture", "--variant", "new-48", "--model", str(path), "--json")
    assert code == 0, err
    added = json.loads(out)
    assert added["input_size_px"] == 48 and 0.0 <= added["accuracy"] <= 1.0
    code, _, err = run_cli(capsys, "zoo", "add", "--repo", repo, "--family", "fixture", "--variant", "new-48", "--model", str(path))
    assert code == 2 and err.count("\n") == 1 and "already exists" in err
    code, _, _ = run_cli(capsys, "zoo", "remove", "--repo", repo, "--family", "fixture", "--variant", "new-48")
    assert code == 0 and "new-48" not in writable_repository.variant_names("fixture")


def test_zoo_add_creates_a_family_with_its_validation_set(capsys, fixture_repository_path, tmp_path):
    source = fixture_repository_path / "fixture"
    validation_dir = tmp_path / "val"
    validation_dir.mkdir()
    shutil.copy(source / "validation.npz", validation_dir / "validation.npz")
    repo = tmp_path / "repo"
    code, out, err = run_cli(
        capsys, "zoo", "add", "--repo", str(repo), "--family", "fresh", "--variant", "rf-64",
        "--model", str(source / "rf-64" / "model.onnx"), "--validation", str(validation_dir), "--json",
    )
    assert code == 0, err
    import yaml

    original = yaml.safe_load((source / "rf-64" / "variant.yaml").read_text())
    assert json.loads(out)["accuracy"] == original["accuracy"]
    assert (repo / "fresh" / "validation.npz").is_file()


def test_errors_are_one_line_with_nonzero_status(capsys, tmp_path, fixture_repository_path):
    bad = tmp_path / "bad.onnx"
    bad.write_text("not onnx")
    code, _, err = run_cli(capsys, "zoo", "add", "--repo", str(tmp_path), "--family", "f", "--variant", "v", "--model", str(bad))
    assert code == 2 and err.startswith("error: ") and err.count("\n") == 1 and "not a loadable ONNX model" in err
    code, _, err = run_cli(capsys, "zoo", "add", "--repo", str(tmp_path), "--family", "../up", "--variant", "v", "--model", str(fixture_repository_path / "fixture" / "rf-16" / "model.onnx"))
    assert code == 2 and "not a valid name" in err
    code, _, err = run_cli(capsys, "zoo", "list", "--repo", str(fixture_repository_path), "--family", "missing")
    assert code == 2 and "family 'missing' is not in repository" in err
    code, _, err = run_cli(capsys, "profile", "--repo", str(fixture_repository_path), "--family", "fixture", "--batch-sizes", "1,x")
    assert code == 2 and "--batch-sizes must be comma-separated integers" in err


def test_profile_command_writes_profiles_and_prints_json(capsys, writable_repository):
    code, out, err = run_cli(
        capsys, "profile", "--repo", str(writable_repository.root), "--family", "fixture",
        "--variant", "rf-16", "--batch-sizes", "1,2", "--repeats", "3", "--json",
    )
    assert code == 0, err
    (profile,) = json.loads(out)
    assert profile["variant"] == "rf-16" and sorted(profile["batches"]) == ["1", "2"]
    assert "samples_ms" not in profile["batches"]["1"]
    assert (writable_repository.root / "fixture" / "rf-16" / "profiles" / "cpu.json").is_file()


def test_console_script_entry_point_runs(fixture_repository_path):
    result = subprocess.run(
        [sys.executable, "-m", "shoal", "zoo", "list", "--repo", str(fixture_repository_path), "--json"],
        capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert len(json.loads(result.stdout)) == 3


def test_usage_errors_exit_2_without_a_traceback(capsys):
    code, _, err = run_cli(capsys, "zoo", "add", "--family", "f")
    assert code == 2
    assert "Missing option" in err and "Traceback" not in err


def test_a_refused_add_leaves_the_repository_as_it_was(capsys, fixture_repository_path, tmp_path):
    """Checked before anything is written or measured: a bad variant name, a model larger than a
    new family's validation frames, or one whose input the family does not take. (A new family's
    files used to stay behind, holding no variant; the others ended in a traceback.)"""
    source = fixture_repository_path / "fixture"
    small_validation = tmp_path / "val.npz"
    np.savez(small_validation, images=np.zeros((4, 3, 32, 32), np.uint8), labels=np.zeros(4, np.int64))
    repo = tmp_path / "repo"
    model_64 = str(source / "rf-64" / "model.onnx")

    code, _, err = run_cli(capsys, "zoo", "add", "--repo", str(repo), "--family", "newfam", "--variant", "bad name", "--model", model_64)
    assert code == 2 and err.startswith("error: --variant 'bad name'") and err.count("\n") == 1, err
    code, _, err = run_cli(capsys, "zoo", "add", "--repo", str(repo), "--family", "fam2", "--variant", "v64", "--model", model_64,
                           "--validation", str(small_validation))  # fmt: skip
    assert code == 2 and "larger than the family's source frames" in err, err
    assert not (repo / "newfam").exists() and not (repo / "fam2").exists()

    rng = np.random.default_rng(2)
    renamed = tmp_path / "renamed.onnx"
    onnx.save(random_feature_model(32, rng.normal(size=(4, 3, 3, 3)).astype(np.float32), rng.normal(size=(4, 10)), np.zeros(10),
                                   input_name="x"), str(renamed))  # fmt: skip
    shutil.copytree(fixture_repository_path, tmp_path / "copy")
    code, _, err = run_cli(capsys, "zoo", "add", "--repo", str(tmp_path / "copy"), "--family", "fixture", "--variant", "x-32", "--model", str(renamed))
    assert code == 2 and "input is named 'x'" in err and err.count("\n") == 1, err


def _model_failing_at_run(path):
    """Loads, and declares a dynamic batch, but reshapes to a batch of 1: fails on any other."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    nodes = [helper.make_node("Conv", ["images", "conv_w"], ["c"], pads=[1, 1, 1, 1]), helper.make_node("GlobalAveragePool", ["c"], ["p"]),
             helper.make_node("Reshape", ["p", "shape"], ["f"]), helper.make_node("Gemm", ["f", "fc_w", "fc_b"], ["logits"])]  # fmt: skip
    weights = [numpy_helper.from_array(rng.normal(size=(4, 3, 3, 3)).astype(np.float32), "conv_w"),
               numpy_helper.from_array(rng.normal(size=(4, 10)).astype(np.float32), "fc_w"),
               numpy_helper.from_array(np.zeros(10, np.float32), "fc_b"), numpy_helper.from_array(np.array([1, -1], np.int64), "shape")]  # fmt: skip
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("images", TensorProto.FLOAT, ["b", 3, 16, 16])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["b", 10])], weights)  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))


def test_a_failed_add_never_removes_a_folder_it_did_not_create_and_names_the_failure(capsys, tmp_path):
    """A folder already named like the new family (holding the user's files, or the very model
    being added) was written into, and removed whole when the add failed; a model that loads but
    fails when run ended in ONNX Runtime's traceback."""
    repo = tmp_path / "repo"
    (repo / "resnet").mkdir(parents=True)
    (repo / "resnet" / "precious.txt").write_text("mine")
    failing = tmp_path / "runfail.onnx"
    _model_failing_at_run(failing)
    code, _, err = run_cli(capsys, "zoo", "add", "--repo", str(repo), "--family", "resnet", "--variant", "v", "--model", str(failing))
    assert code == 2 and "exists but holds no family" in err, err
    assert (repo / "resnet" / "precious.txt").read_text() == "mine"
    code, _, err = run_cli(capsys, "zoo", "add", "--repo", str(repo), "--family", "fresh", "--variant", "v", "--model", str(failing))
    assert code == 2 and err.startswith("error: variant fresh/v: ONNX Runtime failed on a batch of") and err.count("\n") == 1, err
    assert not (repo / "fresh").exists()  # the family it created for the failed variant goes again


def test_bad_names_files_and_validation_sets_are_one_line_errors(capsys, fixture_repository_path, tmp_path):
    model_16 = str(fixture_repository_path / "fixture" / "rf-16" / "model.onnx")
    repo = str(tmp_path / "repo")
    code, _, err = run_cli(capsys, "zoo", "add", "--repo", repo, "--family", "f", "--variant", "v3\n", "--model", model_16)
    assert code == 2 and "is not a valid name" in err  # "$" matched before the newline
    (tmp_path / "afile").write_text("")
    code, _, err = run_cli(capsys, "zoo", "add", "--repo", str(tmp_path / "afile"), "--family", "f", "--variant", "v", "--model", model_16)
    assert code == 2 and "is a file" in err
    np.savez(tmp_path / "floats.npz", images=np.zeros((4, 3, 16, 16), np.uint8), labels=np.array([0.5, 1.0, 2.0, 3.0]))
    np.save(tmp_path / "one.npy", np.zeros(3))
    for validation, message in (("floats.npz", "'labels' must be integers"), ("one.npy", "is one array")):
        code, _, err = run_cli(capsys, "zoo", "add", "--repo", repo, "--family", "f", "--variant", "v", "--model", model_16,
                               "--validation", str(tmp_path / validation))  # fmt: skip
        assert code == 2 and message in err and err.count("\n") == 1, err
    (tmp_path / "latin1.yaml").write_bytes(b"\xff\xfe name: x")
    code, _, err = run_cli(capsys, "plan", "capacity", "--system", str(tmp_path / "latin1.yaml"))
    assert code == 2 and "is not UTF-8 text" in err, err
