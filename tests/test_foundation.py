"""The package's frame: CLI help, the citation file, the descriptors the code reads, mrw info."""

import json
import subprocess
import sys
from pathlib import Path

import click
import jsonschema
import pytest
import yaml
from click.testing import CliRunner

from mrw import paths
from mrw.cli import main
from mrw.descriptors import load_descriptor, published_size
from mrw.errors import UsageError

REPO = Path(__file__).resolve().parent.parent


def test_console_script_help_lists_commands():
    out = subprocess.run(
        [sys.executable, "-m", "mrw.cli", "--help"], capture_output=True, text=True, check=True
    ).stdout
    for name in main.commands:
        assert name in out
    assert {"info", "download"} <= set(main.commands)


@pytest.mark.parametrize("name", sorted(main.commands))
def test_every_command_and_option_is_described(name):
    cmd = main.commands[name]
    assert cmd.help and cmd.help.strip(), f"{name} has no description"
    res = CliRunner().invoke(main, [name, "--help"])
    assert res.exit_code == 0
    for param in cmd.params:
        if isinstance(param, click.Option):
            assert param.help, f"mrw {name} {param.opts[0]} has no help text"
            assert param.opts[0] in res.output


def test_download_help_names_every_contract_option():
    out = CliRunner().invoke(main, ["download", "--help"]).output
    for opt in [
        "--root",
        "--dataset",
        "--split",
        "--metadata",
        "--catalog-only",
        "--from-dir",
        "--limit",
        "--workers",
        "--shard-size",
        "--timeout",
        "--retries",
        "--max-bytes",
        "--per-host",
    ]:
        assert opt in out


def test_citation_file_validates_against_the_cff_schema():
    import cffconvert

    schema = json.loads(
        (Path(cffconvert.__file__).parent / "schemas" / "1.2.0" / "schema.json").read_text()
    )
    data = yaml.safe_load((REPO / "CITATION.cff").read_text())
    jsonschema.validate(data, schema, cls=jsonschema.Draft7Validator)
    assert data["cff-version"] == "1.2.0"
    pref = data["preferred-citation"]
    assert pref["doi"] == "10.1109/CVPR.2019.00208"
    assert [a["family-names"] for a in pref["authors"]] == ["Song", "Soleymani"]
    broken = dict(data, **{"preferred-citation": dict(pref, doi="not a doi")})
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(broken, schema, cls=jsonschema.Draft7Validator)


def test_descriptors_hold_the_published_figures():
    mrw = load_descriptor("mrw")
    sizes = {s: published_size("mrw", s) for s in paths.SPLITS}
    assert sizes == {"train": 44107, "val": 1000, "test": 5000}
    assert sum(sizes.values()) == mrw["statistics"]["total_items"] == 50107
    assert [mrw["splits"][s]["avg_frames"] for s in paths.SPLITS] == [104.91, 209.04, 209.55]
    assert [mrw["splits"][s]["avg_words"] for s in paths.SPLITS] == [11.36, 15.02, 14.79]
    assert mrw["statistics"]["vocabulary_size"] == 34835
    assert published_size("mrw", "valid") == 1000
    tgif = load_descriptor("tgif")
    assert (
        sum(tgif["splits"][s]["items"] for s in paths.SPLITS) == tgif["statistics"]["total_items"]
    )
    coco = load_descriptor("coco")
    assert (
        coco["splits"]["train"]["items"]
        == coco["statistics"]["train_without_restval"] + coco["statistics"]["restval"]
    )
    for d in (mrw, tgif, coco):
        assert d["terms_of_use"] and d["citation"]["bibtex"].startswith("@")
        assert d["release"].get("url") or d["release"].get("files")


def test_split_and_dataset_names():
    assert paths.normalize_split("valid") == "val"
    with pytest.raises(UsageError):
        paths.normalize_split("dev")
    res = CliRunner().invoke(main, ["download", "--split", "dev", "--catalog-only"])
    assert res.exit_code == 2 and "unknown split 'dev'" in res.output
    res = CliRunner().invoke(main, ["download", "--dataset", "msrvtt", "--split", "test"])
    assert res.exit_code == 2


def test_info_reports_published_sizes_and_catalogs(tmp_path):
    from test_catalog import write_mrw_release

    root = tmp_path / "r"
    rel = write_mrw_release(tmp_path / "rel")
    CliRunner().invoke(
        main,
        [
            "download",
            "--root",
            str(root),
            "--split",
            "train",
            "--metadata",
            str(rel),
            "--catalog-only",
        ],
    )
    res = CliRunner().invoke(main, ["info", "--root", str(root), "--json"])
    assert res.exit_code == 0
    report = json.loads(res.output)
    train = report["datasets"]["mrw"]["splits"]["train"]
    assert train["catalog"] == {"items": 3, "sentences": 3} and train["published_items"] == 44107
    assert "catalog" not in report["datasets"]["mrw"]["splits"]["test"]
    text = CliRunner().invoke(main, ["info", "--root", str(root), "--dataset", "mrw"]).output
    assert "44107" in text and "nothing yet" in text
