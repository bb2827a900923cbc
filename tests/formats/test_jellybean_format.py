"""Reading JellyBean's optimizer input folder as shipped: units, the stray comma, clear errors."""

from __future__ import annotations

import json
import shutil
import warnings
from pathlib import Path

import pytest

from shoal.core.errors import InvalidInputError
from shoal.formats.jellybean import InputFormatWarning, read_jellybean_inputs


@pytest.fixture()
def inputs(anchors_dir) -> Path:
    return anchors_dir / "jellybean" / "optimizer_inputs"


@pytest.fixture()
def copy(inputs, anchors_dir, tmp_path) -> Path:
    """A writable copy laid out like the anchors (inputs + ../derived accuracy profiles)."""
    folder = tmp_path / "optimizer_inputs"
    shutil.copytree(inputs, folder)
    for path in folder.iterdir():
        path.chmod(0o644)
    shutil.copytree(anchors_dir / "jellybean" / "derived", tmp_path / "derived")
    return folder


def read_recording(folder, **kwargs):
    """Read and return (inputs, warning texts)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        loaded = read_jellybean_inputs(folder, **kwargs)
    return loaded, [str(item.message) for item in caught]


def read_quietly(folder, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return read_jellybean_inputs(folder, **kwargs)


def test_reads_the_vqa_folder_as_shipped_with_a_warning_for_the_stray_comma(inputs):
    with pytest.warns(InputFormatWarning, match=r"execution_profile.csv: line\(s\) 5 end with a stray comma"):
        loaded = read_jellybean_inputs(inputs)
    problem = loaded.problem
    assert problem.tasks == ("ExtractImageFeature", "SpeechRecognition", "VQA")
    assert dict(problem.source_rates_rps) == {"ReadImage": 40.0, "ReadSpeech": 40.0}
    assert len(problem.workers) == 9
    assert {w.name: w.tier for w in problem.workers}["workflow-compute-gpu-1"] == 1
    assert problem.worker("workflow-compute-cpu-6").price_usd_per_hour == 2.305
    # The stray-comma row is kept, with its value.
    assert problem.latency_ms[("SpeechRecognition", "wav2vec2-base-960h", "workflow-compute-cpu-3")] == 107.50537608333333
    # config.yaml is found in the folder: COMM_COST_SCALING_FACTOR 0.1 scales every link price.
    assert loaded.config_path == inputs / "config.yaml"
    assert problem.source_link_usd_per_gb[("ReadSpeech", "workflow-compute-gpu-1")] == pytest.approx(0.1)
    assert problem.worker_link_usd_per_gb[("workflow-compute-gpu-1", "workflow-compute-cpu-1")] == pytest.approx(1.0)
    # Message sizes are KB (1024 bytes) per request.
    assert problem.message_bytes[("ReadSpeech", "SpeechRecognition", "default", "default")] == \
        pytest.approx(97.07174682617188 * 1024)
    assert problem.accuracy.sink == "VQA" and problem.accuracy.target == 56.0
    assert len(problem.accuracy.table.accuracy_by_variants) == 10
    assert set(problem.accuracy.task_profiles) == {"VQA", "ExtractImageFeature", "SpeechRecognition"}
    assert loaded.jellybean.tier_allocation == "greedy" and loaded.jellybean.beam_width == 10
    assert loaded.jellybean.accuracy_sample_limit is None  # yacs' "None" string


def test_without_a_config_jellybean_defaults_apply(copy):
    (copy / "config.yaml").unlink()
    loaded = read_quietly(copy)
    assert loaded.config_path is None
    assert loaded.problem.source_link_usd_per_gb[("ReadSpeech", "workflow-compute-gpu-1")] == 1.0
    assert loaded.jellybean is None and "STRATEGY 'same-tier' is not implemented" in loaded.jellybean_error


def test_an_explicit_config_and_its_unknown_options(copy, tmp_path):
    config = tmp_path / "other.yaml"
    config.write_text("INPUT:\n  COMM_COST_SCALING_FACTOR: 0.5\n  LATENCY_OVERESTIMATE_RATIO: 2.0\n"
                      "WORKER_ASSIGNMENT:\n  STRATEGY: multiple-tiers\n  TIER_ALLOCATION_STRATEGY: greedy\n"
                      "  COLOUR: blue\n")
    loaded, texts = read_recording(copy, config_path=config)
    assert any(text.endswith("unknown option 'COLOUR' ignored") for text in texts)
    problem = loaded.problem
    assert problem.source_link_usd_per_gb[("ReadSpeech", "workflow-compute-gpu-1")] == 0.5
    assert problem.latency_ms[("VQA", "default", "workflow-compute-gpu-1")] == pytest.approx(2 * 4.585967833333333)


@pytest.mark.parametrize("file, text, message", [
    ("workers_specs.csv", "workflow-compute-cpu-1,cheap\n", r"workers_specs.csv: line 1, field 'price' is not a number"),
    ("workers_specs.csv", "worker,price\nworkflow-compute-cpu-1,0.1\n", "have no header row"),
    ("logical_graph.csv", "ReadImage,ExtractImageFeature,VQA\n", r"line 1 has 3 fields, expected 2 \(u, v\)"),
    ("input_injection_rates.csv", "ReadImage,40\nReadSpeech,40,,\n", "line 2 has 4 fields"),
    ("accuracy_requirement.json", '{"sink": "VQA"}', "accuracy_requirement.json: field threshold: Field required"),
    ("accuracy_requirement.json", "{sink", "accuracy_requirement.json: is not valid JSON"),
    ("workers_partition.json", '[["workflow-compute-cpu-1"]]', r"workers_partition.json: workers \[.*\] are in no tier"),
    ("execution_profile.csv", "VQA,workflow-compute-tpu-9,default,4.0\n", "field 'worker': worker 'workflow-compute-tpu-9' is not in workers_specs.csv"),
    ("message_sizes.csv", "ReadImage,ExtractImageFeature,default,default,1.0\n", "no size for edge 'ReadSpeech' -> 'SpeechRecognition'"),
    ("config.yaml", "INPUT:\n  COMM_COST_SCALING_FACTOR: lots\n", r"config.yaml: field INPUT.COMM_COST_SCALING_FACTOR"),
])
def test_errors_name_the_file_and_the_field(copy, file, text, message):
    (copy / file).write_text(text)
    with pytest.raises(InvalidInputError, match=message):
        read_quietly(copy)


@pytest.mark.parametrize("file, old, new, message", [
    # A second row for the same key won silently (the rate of the last line, the last latency).
    ("input_injection_rates.csv", "ReadImage,40\n", "ReadImage,40\nReadImage,1\n",
     r"input_injection_rates.csv: line 2 repeats line 1 \(source = 'ReadImage'\); keep one"),
    # A misspelt edge kept its ratio at 1.
    ("throughput_normalization_ratios.csv", "ReadSpeech,SpeechRecognition,1.0", "ReadSpeech,SpeechRecogniton,2.0",
     r"throughput_normalization_ratios.csv: line 2: ReadSpeech -> SpeechRecogniton is not an edge of logical_graph.csv"),
    # The planner's own checks named no file.
    ("workers_specs.csv", "workflow-compute-cpu-1,0.096", "workflow-compute-cpu-1,-5",
     r"workers_specs.csv: Worker 'workflow-compute-cpu-1': price_usd_per_hour must be"),
])
def test_repeated_rows_unknown_edges_and_bad_workers_name_the_file(copy, file, old, new, message):
    path = copy / file
    assert old in path.read_text()
    path.write_text(path.read_text().replace(old, new, 1))
    with pytest.raises(InvalidInputError, match=message):
        read_quietly(copy)


@pytest.mark.parametrize("change, message", [
    (lambda d: d["end_to_end_profile"]["acc_profile"].append({"variants": ["resnet18", "wav2vec2-large-960h-lv60-self"], "accuracy": 10}),
     r"nodes_accuracy_profiles.json: end_to_end_profile.acc_profile.\d+: variants \['resnet18', 'wav2vec2-large-960h-lv60-self'\] are listed twice"),
    # 1e400 parses as infinity: the plan's JSON then said "end_to_end_accuracy": Infinity.
    (lambda d: d["end_to_end_profile"]["acc_profile"][0].update(accuracy=float("inf")),
     r"nodes_accuracy_profiles.json: field end_to_end_profile.acc_profile.0.accuracy: Input should be a finite number"),
    (lambda d: d["end_to_end_profile"]["acc_profile"][0].update(variants=["resnet18"]),
     r"nodes_accuracy_profiles.json: .*row \('resnet18',\) has 1 variants for 2 tasks"),
])
def test_accuracy_profile_errors_name_the_file(copy, tmp_path, change, message):
    path = tmp_path / "derived" / "nodes_accuracy_profiles.json"
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))
    with pytest.raises(InvalidInputError, match=message):
        read_quietly(copy)


def test_a_missing_file_is_named(copy):
    (copy / "message_sizes.csv").unlink()
    with pytest.raises(InvalidInputError, match=r"message_sizes.csv: cannot be read"):
        read_quietly(copy)


def test_the_pickle_is_never_loaded(copy, tmp_path):
    shutil.rmtree(tmp_path / "derived")
    (copy / "nodes_accuracy_profiles.pkl").write_bytes(b"\x80\x04not really")
    with pytest.raises(InvalidInputError, match="shoal never unpickles"):
        read_quietly(copy)


def test_accuracy_profiles_can_be_given_explicitly(copy, tmp_path):
    moved = tmp_path / "profiles.json"
    (tmp_path / "derived" / "nodes_accuracy_profiles.json").rename(moved)
    loaded = read_quietly(copy, accuracy_path=moved)
    assert loaded.accuracy_path == moved


def test_missing_partition_puts_every_worker_in_tier_zero_with_a_warning(copy):
    (copy / "workers_partition.json").unlink()
    loaded, texts = read_recording(copy)
    assert any("every worker is in tier 0" in text for text in texts)
    assert {w.tier for w in loaded.problem.workers} == {0}
