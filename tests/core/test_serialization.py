"""The shared readers of users' files: every reader fails the same way, naming the file, for a
file that cannot be read, is not UTF-8, is nested too deep or does not parse."""

from __future__ import annotations

import pytest

from shoal.cli import main
from shoal.core.errors import InvalidInputError
from shoal.core.serialization import read_json_file, read_text_file, read_yaml_file
from shoal.formats.edge_instance import load_edge_instance
from shoal.formats.inferno import load_shoal_system
from shoal.formats.jellybean import read_jellybean_inputs


@pytest.mark.parametrize("reader", [read_text_file, read_json_file, read_yaml_file])
def test_each_reader_names_the_file_that_cannot_be_read_or_is_not_text(reader, tmp_path):
    with pytest.raises(InvalidInputError, match=r"missing\.json: cannot be read \(No such file or directory\); fix it"):
        reader(tmp_path / "missing.json", fix="; fix it")
    (tmp_path / "folder").mkdir()
    with pytest.raises(InvalidInputError, match=r"folder: cannot be read \(Is a directory\)$"):
        reader(tmp_path / "folder")
    (tmp_path / "latin1.txt").write_bytes(b"caf\xe9: 1\n")
    with pytest.raises(InvalidInputError, match=r"latin1\.txt: is not UTF-8 text"):
        reader(tmp_path / "latin1.txt")


@pytest.mark.parametrize(
    ("reader", "deep", "broken", "message"),
    [
        (read_json_file, "[" * 100_000, "{sink", r"broken: is not valid JSON \(Expecting property name .* at line 1\)"),
        (read_yaml_file, "[" * 100_000, "a: [1,\n", r"broken: is not valid YAML \(while parsing"),
    ],
)
def test_documents_nested_too_deep_or_broken_are_errors_not_tracebacks(reader, deep, broken, message, tmp_path):
    (tmp_path / "deep").write_text(deep)
    with pytest.raises(InvalidInputError, match=r"deep: is nested too deep"):
        reader(tmp_path / "deep")
    (tmp_path / "broken").write_text(broken)
    with pytest.raises(InvalidInputError, match=message):
        reader(tmp_path / "broken")
    (tmp_path / "fine").write_text('{"a": [1, 2]}')
    assert reader(tmp_path / "fine") == {"a": [1, 2]}


def test_format_loaders_share_the_readers_messages(tmp_path):
    (tmp_path / "latin1.yaml").write_bytes(b"caf\xe9: 1\n")
    with pytest.raises(InvalidInputError, match=r"latin1\.yaml: is not UTF-8 text"):
        load_shoal_system(tmp_path / "latin1.yaml")
    with pytest.raises(InvalidInputError, match=r"gone\.json: cannot be read \(No such file or directory\); check the --instance path"):
        load_edge_instance(tmp_path / "gone.json")
    workflow = tmp_path / "workflow"
    workflow.mkdir()
    (workflow / "config.yaml").write_text("[" * 100_000)
    with pytest.raises(InvalidInputError, match=r"config\.yaml: is nested too deep"):
        read_jellybean_inputs(workflow)


def test_a_price_table_that_is_not_text_is_a_one_line_error(capsys, fixture_repository_path, tmp_path):
    # A UnicodeDecodeError traceback before.
    prices = tmp_path / "prices.yaml"
    prices.write_bytes(b"\xff\xfe\x00cpu: 1\n")
    assert main(["serve", "--repo", str(fixture_repository_path), "--prices", str(prices)]) == 2
    assert "--prices " in (err := capsys.readouterr().err) and "prices.yaml: is not UTF-8 text" in err, err
