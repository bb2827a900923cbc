import numpy as np
import pytest

from shoal.core import Device
from shoal.core.errors import DeviceUnavailableError, InvalidInputError
from shoal.profiler import create_session, measure_accuracy, profile_variant
from shoal.profiler.family import profile_family, profile_steps
from shoal.profiler.measure import summarise_latencies
from shoal.zoo.preprocess import resize_images
from shoal.zoo.repository import ModelRepository


def test_summary_percentiles_match_numpy():
    samples = list(np.linspace(1.0, 100.0, 100))
    stats = summarise_latencies(4, samples)
    assert stats.p50_ms == pytest.approx(np.percentile(samples, 50), abs=1e-3)
    assert stats.p99_ms == pytest.approx(np.percentile(samples, 99), abs=1e-3)
    assert stats.samples_ms[0] == 1.0 and len(stats.samples_ms) == 100
    assert stats.throughput_rps == pytest.approx(4 * 1000 / np.mean(samples), rel=1e-3)


def test_profile_variant_measures_every_batch_size_and_accuracy(fixture_repository_path):
    repository = ModelRepository(fixture_repository_path)
    family = repository.load_family("fixture")
    variant = repository.load_variant("fixture", "rf-32")
    steps = []
    profile = profile_variant(
        repository.model_path("fixture", "rf-32"),
        family,
        variant,
        Device.parse("cpu"),
        batch_sizes=[4, 1, 2],
        repeats=5,
        intra_op_threads=1,
        validation=repository.load_validation("fixture"),
        progress=steps.append,
    )
    assert profile.batch_sizes == [1, 2, 4]
    assert all(len(stats.samples_ms) == 5 for stats in profile.batches.values())
    assert all(0 < stats.p50_ms <= stats.p99_ms for stats in profile.batches.values())
    assert profile.load_time_ms > 0 and profile.intra_op_threads == 1
    # Accuracy measured by the profiler is the accuracy measured at registration (same preprocessing).
    assert profile.accuracy == pytest.approx(variant.accuracy, abs=1e-6)
    assert sum(steps) == profile_steps(1, [1, 2, 4], 5, profile.num_validation_images)


def test_measure_accuracy_agrees_with_a_direct_computation(fixture_repository_path):
    repository = ModelRepository(fixture_repository_path)
    family = repository.load_family("fixture")
    variant = repository.load_variant("fixture", "rf-16")
    images, labels = repository.load_validation("fixture")
    session = create_session(repository.model_path("fixture", "rf-16"), Device.parse("cpu"))
    (logits,) = session.run(None, {"images": resize_images(images.astype(np.float32) / 255.0, 16)})
    expected = float((logits.argmax(axis=1) == labels).mean())
    assert measure_accuracy(session, family, variant, images, labels, batch_size=7) == pytest.approx(expected)


def test_profile_family_writes_profiles_per_device(writable_repository):
    profiles = profile_family(writable_repository, "fixture", Device.parse("cpu"), batch_sizes=[1, 2], repeats=2)
    assert [p.variant for p in profiles] == ["rf-16", "rf-32", "rf-64"]
    for profile in profiles:
        path = writable_repository.root / "fixture" / profile.variant / "profiles" / "cpu.json"
        assert path.is_file()
        assert writable_repository.load_profile("fixture", profile.variant, Device.parse("cpu")) == profile


def test_missing_device_is_a_clear_error(fixture_repository_path, monkeypatch):
    import onnxruntime

    # Pretend to be a CPU-only machine so the test means the same on a GPU host.
    monkeypatch.setattr(onnxruntime, "get_available_providers", lambda: ["CPUExecutionProvider"])
    repository = ModelRepository(fixture_repository_path)
    with pytest.raises(DeviceUnavailableError, match="'cuda:0' is not available"):
        profile_variant(
            repository.model_path("fixture", "rf-16"),
            repository.load_family("fixture"),
            repository.load_variant("fixture", "rf-16"),
            Device.parse("cuda:0"),
        )


def test_bad_arguments_are_refused(fixture_repository_path):
    repository = ModelRepository(fixture_repository_path)
    args = (repository.model_path("fixture", "rf-16"), repository.load_family("fixture"), repository.load_variant("fixture", "rf-16"), Device.parse("cpu"))
    with pytest.raises(InvalidInputError, match="repeats must be >= 1"):
        profile_variant(*args, repeats=0)
    with pytest.raises(InvalidInputError, match="batch sizes must be integers from 1 to 4096"):
        profile_variant(*args, batch_sizes=[0])
    with pytest.raises(InvalidInputError, match="batch sizes must be integers from 1 to 4096"):
        profile_variant(*args, batch_sizes=[10**12])  # its inputs alone: a MemoryError traceback before
    # Each intra-op thread is an OS thread: 100,000 of them used up the machine before a kill.
    with pytest.raises(InvalidInputError, match="intra_op_threads 100000: give 0 .* to 1024"):
        create_session(args[0], Device.parse("cpu"), intra_op_threads=100_000)


def test_thread_and_worker_counts_past_any_machine_are_refused_at_the_command_line(capsys, fixture_repository_path):
    from shoal.cli import main

    repo = str(fixture_repository_path)
    for command in (["profile", "--repo", repo, "--family", "fixture", "--threads", "100000"],
                    ["serve", "--repo", repo, "--threads", "100000"],
                    ["serve", "--repo", repo, "--workers", "100000"],
                    ["serve", "--repo", repo, "--workers", "2", "--burst-threads", "5000"]):  # fmt: skip
        assert main(command) == 2, command
        assert f"Invalid value for '{command[-2]}'" in capsys.readouterr().err
