"""`shoal plan capacity` and the registration of `shoal bench planner capacity`."""

from __future__ import annotations

import json
import shutil

import pytest

from shoal.cli import main


@pytest.fixture(scope="module")
def small_dir(anchors_dir):
    return anchors_dir / "inferno" / "sample-data@849e1e8" / "small"


def _run(capsys, *args):
    code = main(["plan", "capacity", *args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.mark.parametrize(
    "args, total",
    [([], 43_819.0), (["--solver", "greedy"], 43_819.0), (["--solver", "milp"], 41_857.75), (["--unlimited"], 35_924.5)],
)
def test_plan_capacity_prints_solution_json(capsys, small_dir, args, total):
    code, out, err = _run(capsys, "--system", str(small_dir), *args)
    assert code == 0, err
    solution = json.loads(out)
    assert solution["total_cost"] == pytest.approx(total)
    assert len(solution["allocations"]) == 15
    first = next(iter(solution["allocations"].values()))
    assert {"accelerator", "numReplicas", "maxBatch", "cost", "itlAverage", "ttftAverage", "load"} <= set(first)


def test_plan_capacity_reads_a_system_data_file(capsys, small_dir):
    code, out, _ = _run(capsys, "--system", str(small_dir / "system-data.json"))
    assert code == 0 and json.loads(out)["total_cost"] == pytest.approx(43_819.0)


def test_malformed_input_is_one_line_naming_the_field(capsys, small_dir, tmp_path):
    for path in small_dir.glob("*-data.json"):
        shutil.copy(path, tmp_path / path.name)
    servers = json.loads((tmp_path / "server-data.json").read_text())
    del servers["servers"][4]["model"]
    (tmp_path / "server-data.json").write_text(json.dumps(servers))
    code, out, err = _run(capsys, "--system", str(tmp_path))
    assert code == 2 and out == ""
    assert err.count("\n") == 1
    assert err.startswith("error: ") and "server-data.json: field servers.4.model: Field required" in err


def test_missing_path_and_bad_solver(capsys, tmp_path):
    code, _, err = _run(capsys, "--system", str(tmp_path / "absent"))
    assert code == 2 and "no such file or folder" in err
    code, _, err = _run(capsys, "--system", str(tmp_path), "--solver", "cplex")
    assert code == 2 and err == "error: --solver 'cplex' is unknown: use one of greedy, milp\n"


def test_bench_command_is_registered(capsys):
    assert main(["bench", "planner", "capacity", "--help"]) == 0
    assert "--quick" in capsys.readouterr().out


def test_help_shows_the_kubernetes_defaults(capsys, monkeypatch):
    # Rich read "[default: ...]" in the help text as markup and printed nothing of it.
    monkeypatch.setenv("COLUMNS", "250")
    assert main(["plan", "capacity", "--help"]) == 0
    out = capsys.readouterr().out
    assert "namespace [default: default]" in out and "Deployment [default: shoal.ai/server]" in out
