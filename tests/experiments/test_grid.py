"""Experiment grids: the file format, the cells, and a simulated grid end to end via the CLI."""

from __future__ import annotations

import json

import pytest

from shoal.cli import main
from shoal.core.errors import InvalidInputError
from shoal.experiments.edge_serving import StaticCandidate
from shoal.experiments.grid import GridSpec, cells, load_grid, resolve_statics


def _write(tmp_path, text: str):
    path = tmp_path / "grid.yaml"
    path.write_text(text)
    return path


def test_grid_files_are_validated_with_the_field_named(tmp_path):
    with pytest.raises(InvalidInputError, match="does not exist"):
        load_grid(tmp_path / "none.yaml")
    with pytest.raises(InvalidInputError, match="mapping"):
        load_grid(_write(tmp_path, "- 1\n- 2\n"))
    with pytest.raises(InvalidInputError, match="'colour'"):
        load_grid(_write(tmp_path, "colour: red\n"))
    with pytest.raises(InvalidInputError, match="'policies'"):
        load_grid(_write(tmp_path, "policies: [fastest]\n"))
    with pytest.raises(InvalidInputError, match="'clients'"):
        load_grid(_write(tmp_path, "clients: [0]\n"))
    with pytest.raises(InvalidInputError, match="neither a built-in"):
        load_grid(_write(tmp_path, "traces: [moon]\n"))
    with pytest.raises(InvalidInputError, match="not valid YAML"):
        load_grid(_write(tmp_path, "clients: [1\n"))


def test_the_default_grid_is_jellyfishs():
    spec = GridSpec()
    grid = list(cells(spec))
    assert len(grid) == 4 * 3 * 2 * 3
    assert {cell.clients for cell in grid} == {1, 2, 4, 8} and {cell.trace for cell in grid} == {"synthetic", "wifi", "lte"}
    scenario = grid[0].scenario(spec)
    assert scenario.clients == grid[0].clients and scenario.duration_s == 60.0


def test_static_policies_resolve_to_concrete_variants():
    candidates = [StaticCandidate("f.a", 0.5, 16, 1.0), StaticCandidate("f.b", 0.7, 64, 2.0), StaticCandidate("f.c", 0.9, 128, 5.0)]
    scenario = list(cells(GridSpec(traces=["wifi"], clients=[1])))[0].scenario(GridSpec())
    assert resolve_statics("static-smallest", candidates, scenario, all_for_best=False) == ["static:f.a"]
    assert resolve_statics("static-largest", candidates, scenario, all_for_best=False) == ["static:f.c"]
    assert len(resolve_statics("static-best", candidates, scenario, all_for_best=True)) == 3
    assert len(resolve_statics("static-best", candidates, scenario, all_for_best=False)) == 1
    assert resolve_statics("shoal", candidates, scenario, all_for_best=False) == ["shoal"]


def test_simulated_grid_and_simulate_command_on_the_fixture_family(capsys, writable_repository, tmp_path):
    repo = str(writable_repository.root)
    assert main(["profile", "--repo", repo, "--family", "fixture", "--batch-sizes", "1,2,4", "--repeats", "3", "--json"]) == 0
    capsys.readouterr()
    grid = _write(tmp_path, "family: fixture\nclients: [2]\nslo_ms: [40]\nfps: [10]\ntraces: [synthetic]\nduration_s: 5\n"
                  "policies: [shoal, jellyfish, infaas, static-smallest, static-largest, static-best]\n")
    out = tmp_path / "results"
    assert main(["experiment", "run", "--grid", str(grid), "--simulate", "--repo", repo, "--out", str(out), "--json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["mode"] == "simulated" and printed["runs"] == 6
    results = json.loads((out / "results.json").read_text())
    assert results["configuration"]["family"] == "fixture" and results["version"]
    rows = results["rows"]
    assert [row["policy"] for row in rows] == ["shoal", "jellyfish", "infaas", "static-smallest", "static-largest", "static-best"]
    for row in rows:
        assert row["frames"] == 2 * 5 * 10 and len(row["latency_percentiles_ms"]) in (0, 100)
        assert row["setting"] and 0.0 <= row["miss_rate"] <= 1.0
    assert rows[3]["setting"] == "static:fixture.rf-16" and rows[4]["setting"] == "static:fixture.rf-64"
    assert (out / "grid.png").stat().st_size > 1000 and (out / "results.csv").read_text().startswith("clients,")
    assert main(["simulate", "--repo", repo, "--family", "fixture", "--duration-s", "3", "--policies", "shoal,static:fixture.rf-32", "--json"]) == 0
    simulated = json.loads(capsys.readouterr().out)
    assert set(simulated) == {"shoal", "static:fixture.rf-32"} and simulated["shoal"]["plans"] > 0
    assert main(["simulate", "--repo", repo, "--family", "fixture", "--policies", "static:fixture.nope"]) == 2
    assert "no variant" in capsys.readouterr().err
