import json

import pytest
from pydantic import ValidationError

from shoal.core import Device, Family, InvalidInputError, LatencyStats, Profile, Variant, dump_json, dump_yaml, load_json, load_yaml


def make_profile(latencies_ms: dict[int, float]) -> Profile:
    return Profile(
        family="demo",
        variant="v",
        device="cpu",
        batches={
            size: LatencyStats(batch_size=size, p50_ms=ms, p95_ms=ms * 1.1, p99_ms=ms * 1.2, mean_ms=ms, samples_ms=[ms])
            for size, ms in latencies_ms.items()
        },
        load_time_ms=12.0,
        accuracy=0.8,
    )


@pytest.mark.parametrize("name", ["../evil", "a/b", "", ".hidden", "a..b", "x" * 65, "white space", "v3\n"])
def test_unsafe_names_are_refused(name):
    with pytest.raises(ValidationError, match="not a valid name"):
        Variant(name=name, family="demo", input_size_px=32)


def test_device_parsing_and_file_names():
    assert Device.parse("CPU").name == "cpu"
    gpu = Device.parse("cuda:1")
    assert (gpu.kind, gpu.index, gpu.file_stem) == ("cuda", 1, "cuda-1")
    assert gpu.onnxruntime_providers[0][0] == "CUDAExecutionProvider"
    assert Device.parse("gpu").name == "cuda:0"
    with pytest.raises(ValueError, match="use 'cpu' or 'cuda:N'"):
        Device.parse("tpu")


def test_family_class_names_must_match_count():
    with pytest.raises(ValidationError, match="class_names has 2 entries"):
        Family(name="f", num_classes=3, class_names=["a", "b"], source_image_px=64)


def test_monotone_view_is_non_decreasing_and_raw_data_is_kept():
    profile = make_profile({1: 2.0, 2: 3.0, 4: 2.5, 8: 6.0})
    monotone = profile.monotone_latency_ms("p50")
    assert monotone == {1: 2.0, 2: 3.0, 4: 3.0, 8: 6.0}
    assert profile.batches[4].p50_ms == 2.5


def test_batch_latency_interpolates_and_extrapolates():
    profile = make_profile({1: 2.0, 4: 5.0, 8: 9.0})
    assert profile.batch_latency_ms(2, "p50") == pytest.approx(3.0)
    assert profile.batch_latency_ms(16, "p50") == pytest.approx(17.0)  # slope 1 ms per item beyond 8
    with pytest.raises(ValueError):
        profile.batch_latency_ms(0)


def test_throughput_is_derived_from_mean_latency():
    profile = make_profile({1: 2.0, 8: 8.0})
    assert profile.batches[8].throughput_rps == pytest.approx(1000.0)
    assert profile.peak_throughput_rps() == pytest.approx(1000.0)


def test_profile_keys_must_match_batch_sizes():
    stats = LatencyStats(batch_size=2, p50_ms=1, p95_ms=1, p99_ms=1, mean_ms=1)
    with pytest.raises(ValidationError, match="holds stats for batch size 2"):
        Profile(family="f", variant="v", device="cpu", batches={1: stats}, load_time_ms=1)


def test_json_and_yaml_round_trip(tmp_path):
    profile = make_profile({1: 2.0, 2: 3.5})
    dump_json(profile, tmp_path / "p.json")
    assert load_json(Profile, tmp_path / "p.json") == profile
    variant = Variant(name="small-32", family="demo", input_size_px=32, accuracy=0.7, parameter_count=10)
    dump_yaml(variant, tmp_path / "v.yaml")
    assert load_yaml(Variant, tmp_path / "v.yaml") == variant


def test_loading_bad_files_names_the_file_and_field(tmp_path):
    path = tmp_path / "v.yaml"
    path.write_text("name: ok\nfamily: demo\ninput_size_px: -3\n")
    with pytest.raises(InvalidInputError, match=r"v\.yaml: field input_size_px"):
        load_yaml(Variant, path)
    path.write_text("name: [unclosed\n")
    with pytest.raises(InvalidInputError, match="not valid YAML"):
        load_yaml(Variant, path)
    (tmp_path / "p.json").write_text(json.dumps({"family": "f"})[:-1])
    with pytest.raises(InvalidInputError, match="not valid JSON"):
        load_json(Profile, tmp_path / "p.json")
    with pytest.raises(InvalidInputError, match="cannot be read"):
        load_json(Profile, tmp_path / "missing.json")


def test_a_profile_with_an_infinite_latency_is_refused():
    """JSON files carry no infinity; one read from a file (Python's json takes 'Infinity') was
    printed back by `zoo list --json` as JSON no other program parses."""
    with pytest.raises(ValidationError, match="finite number"):
        LatencyStats(batch_size=1, p50_ms=float("inf"), p95_ms=1.0, p99_ms=1.0, mean_ms=1.0)
