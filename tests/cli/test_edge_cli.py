"""Edge-related commands: bad input fails fast with one line; the planner bench on a family's
measured profiles."""

from __future__ import annotations

import json

from shoal.cli import main


def test_bad_options_fail_before_any_work(capsys, fixture_repository_path, tmp_path):
    repo = str(fixture_repository_path)
    assert main(["demo", "--repo", repo, "--statics", "some"]) == 2
    assert "--statics 'some'" in capsys.readouterr().err
    assert main(["demo", "--repo", repo, "--trace", "moon"]) == 2
    assert "neither a built-in trace" in capsys.readouterr().err
    assert main(["bench", "edge-serve", "--repo", repo, "--traces", "lte,moon"]) == 2
    assert "'moon'" in capsys.readouterr().err
    assert main(["bench", "edge-serve", "--repo", repo, "--family", "nope"]) == 2
    assert "not in" in capsys.readouterr().err
    assert main(["serve", "--repo", repo, "--edge-policy", "greedy"]) == 2
    assert "--edge-policy 'greedy'" in capsys.readouterr().err
    assert main(["serve", "--repo", repo, "--backend", "ray", "--ray-placement", "ANYWHERE"]) == 2
    assert "--ray-placement 'ANYWHERE'" in capsys.readouterr().err
    assert main(["serve", "--repo", repo, "--fault-injection"]) == 2
    assert "--fault-injection needs --admin-token" in capsys.readouterr().err
    prices = tmp_path / "gpu-prices.yaml"
    prices.write_text("gpu: 3.06\n")  # no cpu price: every variant served on cpu would be free
    assert main(["serve", "--repo", repo, "--prices", str(prices)]) == 2
    assert "no price for 'cpu'" in capsys.readouterr().err
    # Output paths are checked before the run, whose results they would lose at its end.
    (tmp_path / "afile").write_text("")
    assert main(["demo", "--repo", repo, "--report-dir", str(tmp_path / "afile")]) == 2
    assert "--report-dir" in capsys.readouterr().err
    assert main(["demo", "--repo", repo, "--out", str(tmp_path)]) == 2
    assert "is a folder" in capsys.readouterr().err


def test_planner_bench_runs_on_a_familys_measured_profiles(capsys, writable_repository):
    repo = str(writable_repository.root)
    assert main(["bench", "planner", "edge", "--repo", repo, "--family", "fixture", "--quick", "--instances", "2", "--json"]) == 2
    assert "no CPU profiles" in capsys.readouterr().err
    assert main(["profile", "--repo", repo, "--family", "fixture", "--batch-sizes", "1,2,4,8", "--repeats", "3", "--json"]) == 0
    capsys.readouterr()
    assert main(["bench", "planner", "edge", "--repo", repo, "--family", "fixture", "--quick", "--instances", "2", "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert {"shoal", "jellyfish"} <= set(summary)
    assert 0.0 < summary["shoal"]["mean_ratio_to_exact"] <= 1.0 + 1e-9


def test_sigterm_to_a_command_runs_its_cleanup_and_exits_143(tmp_path):
    """SIGTERM used to end a command without its `finally` blocks (the demo left `shoal serve`
    running); it is now an interrupt, and the exit status still says terminated (128 + 15)."""
    import signal
    import subprocess
    import sys
    import textwrap
    import time

    script = tmp_path / "slow_command.py"
    script.write_text(textwrap.dedent(f"""
        import sys, time
        from shoal.cli import main
        from shoal.cli._app import app

        @app.command("sleep-for-test")
        def sleep_for_test() -> None:
            try:
                print("ready", flush=True)
                time.sleep(30)
            finally:
                open({str(tmp_path / "cleaned")!r}, "w").close()

        sys.exit(main(["sleep-for-test"]))
    """))
    process = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert process.stdout.readline().strip() == "ready"
    time.sleep(0.2)
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=20) == 143
    assert (tmp_path / "cleaned").exists()


def test_a_local_ray_instance_is_checked_for_the_device_before_ray_starts(capsys, fixture_repository_path):
    # Without --address the actors run on this machine: a GPU it lacks waited 120 s for a placement.
    assert main(["serve", "--repo", str(fixture_repository_path), "--backend", "ray", "--device", "cuda:0"]) == 1
    assert "device 'cuda:0' is not available" in capsys.readouterr().err


def test_output_paths_that_cannot_be_written_fail_before_any_work(capsys, fixture_repository_path):
    repo = str(fixture_repository_path)
    # /proc takes no new files, even from root: the run's results would be lost at its end
    assert main(["demo", "--repo", repo, "--no-serve", "--out", "/proc/shoal-results.json"]) == 2
    assert "--out /proc/shoal-results.json: cannot write there" in capsys.readouterr().err
    assert main(["demo", "--repo", repo, "--report-dir", "/proc/shoal-report"]) == 2
    assert "--report-dir /proc/shoal-report: cannot write there" in capsys.readouterr().err
    assert main(["demo", "--repo", repo, "--duration-s", "inf"]) == 2  # a range error, before any work
    assert main(["bench", "edge-serve", "--repo", repo, "--slo-ms", "1e12"]) == 2


def test_one_report_folder_holds_one_run_at_a_time(tmp_path):
    from shoal.core.errors import InvalidInputError
    from shoal.experiments.edge_live import _report_lock

    with _report_lock(tmp_path):
        try:
            with _report_lock(tmp_path):
                raise AssertionError("a second run got the folder")
        except InvalidInputError as error:
            assert "another run is writing its report there" in str(error)
    with _report_lock(tmp_path):  # free again once the first run is done
        pass


def test_sigterm_while_a_server_starts_leaves_no_server_behind(tmp_path, fixture_repository_path):
    """The demo's SIGTERM (an interrupt in shoal's CLI) arriving while `shoal serve` starts: the
    server it started was left running for good."""
    import os
    import signal
    import subprocess
    import sys
    import textwrap
    import time

    from shoal.experiments.server_process import child_pids

    script = tmp_path / "start_server.py"
    script.write_text(textwrap.dedent(f"""
        import signal, sys
        from pathlib import Path
        from shoal.experiments.server_process import start_server_process

        def interrupt(signum, frame):
            raise KeyboardInterrupt

        signal.signal(signal.SIGTERM, interrupt)
        try:
            start_server_process(Path({str(fixture_repository_path)!r}), "--preload", "fixture.rf-64", timeout_s=120)
        except KeyboardInterrupt:
            sys.exit(143)
    """))
    process = subprocess.Popen([sys.executable, str(script)])
    deadline = time.monotonic() + 30
    while not child_pids(process.pid) and time.monotonic() < deadline:
        time.sleep(0.01)
    (server_pid,) = child_pids(process.pid)
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=60) == 143
    time.sleep(0.2)
    try:
        os.kill(server_pid, 0)
        alive = open(f"/proc/{server_pid}/stat").read().split()[2] != "Z"
    except (ProcessLookupError, FileNotFoundError):
        alive = False
    if alive:
        os.kill(server_pid, signal.SIGKILL)
    assert not alive


def test_output_checks_create_nothing(tmp_path):
    from shoal.cli._common import check_output_file, check_output_folder

    check_output_file(tmp_path / "new" / "deeper" / "results.json", "--out")
    check_output_folder(tmp_path / "reports" / "run-1", "--report-dir")
    assert list(tmp_path.iterdir()) == []  # the run makes its folders when it writes


def test_a_report_folder_lock_leaves_nothing_in_the_folder(tmp_path):
    from shoal.experiments.edge_live import _report_lock

    with _report_lock(tmp_path):
        pass
    assert list(tmp_path.iterdir()) == []  # a lock file would end up in reports kept in git


def test_a_server_that_fails_to_start_is_a_process_error_not_a_traceback(tmp_path):
    from shoal.core.errors import ProcessFailedError
    from shoal.experiments.server_process import start_server_process

    (tmp_path / "not-a-repository").write_text("")
    try:
        start_server_process(tmp_path / "not-a-repository", timeout_s=60)
    except ProcessFailedError as error:  # the CLI prints it as one line, exit 1
        assert isinstance(error, RuntimeError) and "exited with status 2" in str(error) and "--repo" in str(error)
    else:
        raise AssertionError("a server on a file for a repository started")
