"""The command line follows one convention: `--root` reads MRW_HOME, the help shows every default
and range, numbers are refused outside their range (inf and nan too) as they are parsed, an
option name means one thing in every command, and a command about one split needs `--split`."""

import json
import subprocess
import sys
from pathlib import Path

import click
import numpy as np
import pytest
from click.testing import CliRunner

from mrw import paths
from mrw.catalog import write_catalog
from mrw.cli import main
from mrw.cli.options import BoundedInt, FiniteFloat, OptionValueError

REPO = Path(__file__).resolve().parent.parent


def invoke(*args, env=None):
    return CliRunner().invoke(main, [str(a) for a in args], env=env)


def one_error_line(result, code: int = 2) -> str:
    """The command exited `code` with exactly one line on stderr, `mrw: error: ...`."""
    assert result.exit_code == code, (result.exit_code, result.output)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("mrw: error: "), result.stderr
    assert "Traceback" not in result.output
    return lines[0]


def visible_options(command: click.Command):
    return [p for p in command.params if isinstance(p, click.Option) and not p.hidden]


def catalog(root: Path, split: str = "train", dataset: str = "mrw") -> Path:
    rows = [
        {"id": f"v{i}", "sentences": [f"a cat {i}"], "url": None, "protocol_sentences": [0]}
        for i in range(3)
    ]
    return write_catalog(rows, root, dataset, split)


# -- --root and MRW_HOME ---------------------------------------------------------------------------
def test_root_comes_from_mrw_home_unless_given(tmp_path):
    home, other = tmp_path / "home", tmp_path / "other"
    catalog(home)
    catalog(other)
    result = invoke("build-vocab", "--split", "train", env={"MRW_HOME": str(home)})
    assert result.exit_code == 0, result.output
    assert (home / "mrw" / "vocab-train.json").exists()
    result = invoke("build-vocab", "--root", other, "--split", "train", env={"MRW_HOME": str(home)})
    assert result.exit_code == 0, result.output
    assert (other / "mrw" / "vocab-train.json").exists()
    report = json.loads(invoke("info", "--json", env={"MRW_HOME": str(home)}).output)
    assert report["datasets"]["mrw"]["splits"]["train"]["catalog"]["items"] == 3


@pytest.mark.parametrize("name", sorted(main.commands))
def test_every_root_option_names_its_variable_and_default(name):
    root = next(p for p in main.commands[name].params if p.name == "root")
    assert root.envvar == "MRW_HOME"
    help_text = " ".join(invoke(name, "--help").output.split())
    assert "env var: MRW_HOME" in help_text and "default: ~/.cache/mrw" in help_text


def test_unset_mrw_home_means_the_cache_folder(monkeypatch):
    monkeypatch.delenv("MRW_HOME")
    ctx = main.commands["info"].make_context("info", [])
    assert paths.resolve_root(ctx.params["root"]) == Path("~/.cache/mrw").expanduser()


# -- defaults and ranges in the help ---------------------------------------------------------------
@pytest.mark.parametrize("name", sorted(main.commands))
def test_help_shows_every_default_and_range(name):
    command = main.commands[name]
    with main.make_context("mrw", [name]) as parent:
        ctx = command.make_context(name, ["--help"], parent=parent, resilient_parsing=True)
        for option in visible_options(command):
            record = option.get_help_record(ctx)
            assert record is not None
            extra = record[1]
            if option.is_flag or option.required:
                assert not option.required or "required" in extra, (name, option.opts, extra)
                continue
            if option.default is not None or isinstance(option.show_default, str):
                assert "default: " in extra, (name, option.opts, extra)
            if isinstance(option.type, (click.IntRange, click.FloatRange)):
                assert "x" in extra.split("default:")[-1], (name, option.opts, extra)


# -- values refused as they are parsed --------------------------------------------------------------
REFUSED = [
    (["download", "--split", "test"], "--timeout", ["inf", "-inf", "nan", "0", "-1", "1e308"]),
    (["download", "--split", "test"], "--metadata-timeout", ["inf", "nan", "0"]),
    (["download", "--split", "test"], "--workers", ["0", "-1", "two"]),
    (["download", "--split", "test"], "--per-host", ["0"]),
    (["download", "--split", "test"], "--shard-size", ["0"]),
    (["download", "--split", "test"], "--retries", ["-1"]),
    (["download", "--split", "test"], "--max-bytes", ["0"]),
    (["download", "--split", "test"], "--metadata-max-bytes", ["0"]),
    (["download", "--split", "test"], "--limit", ["-1"]),
    (["download", "--split", "test"], "--max-shard-retry", ["-1"]),
    (["extract-frames", "--split", "test"], "--fps", ["inf", "nan", "0", "-8"]),
    (["extract-frames", "--split", "test"], "--size", ["15", "4097"]),
    (["extract-frames", "--split", "test"], "--quality", ["0", "101"]),
    (["extract-frames", "--split", "test"], "--workers", ["0"]),
    (["extract-features", "--split", "test"], "--workers", ["-1"]),
    (["extract-features", "--split", "test"], "--batch-size", ["0"]),
    (["extract-features", "--split", "test"], "--max-frames", ["0"]),
    (["validate", "--split", "test"], "--workers", ["0"]),
    (["build-vocab", "--split", "test"], "--min-count", ["0"]),
    (["preview", "--split", "test"], "--page-size", ["0", "5001"]),
    (["preview", "--split", "test"], "--queries", ["0"]),
    (["preview", "--split", "test"], "--workers", ["0"]),
    (["preview", "--split", "test"], "--seed", ["-1"]),
]


@pytest.mark.parametrize(
    "args,option,value",
    [(args, option, value) for args, option, values in REFUSED for value in values],
)
def test_meaningless_values_exit_2_on_one_line_before_anything_is_written(
    tmp_path, args, option, value
):
    root = tmp_path / "root"
    line = one_error_line(invoke(*args, "--root", root, option, value))
    assert f"{option} must be " in line and f"got {value}" in line, line
    assert f"'mrw {args[0]} --help'" in line
    assert not root.exists()


def test_existing_wording_of_refusals_is_kept(tmp_path):
    cases = [
        (["extract-frames", "--fps", "0"], "--fps must be a positive number"),
        (["extract-frames", "--size", "4"], "--size must be between 16 and 4096 pixels"),
        (["extract-frames", "--quality", "101"], "--quality must be between 1 and 100"),
        (["extract-frames", "--workers", "0"], "--workers must be a positive integer"),
        (["extract-features", "--workers", "-1"], "--workers must be 0 or more"),
    ]
    for args, message in cases:
        line = one_error_line(invoke(*args, "--split", "test", "--root", tmp_path / "r"))
        assert message in line, line


def test_finite_float_refuses_what_clicks_float_range_lets_through():
    open_ended = click.FloatRange(min=0, min_open=True)
    assert np.isnan(open_ended.convert("nan", None, None))  # why a type of our own is needed
    assert open_ended.convert("inf", None, None) == float("inf")
    finite = FiniteFloat(min=0, min_open=True)
    assert finite.convert("2.5", None, None) == 2.5
    for bad in ("nan", "inf", "-inf", "0", "-1", "eight"):
        with pytest.raises(OptionValueError, match="must be a positive number"):
            finite.convert(bad, None, None)
    bounded = FiniteFloat(min=0, max=10, min_open=True, unit="seconds")
    assert bounded.convert("10", None, None) == 10.0
    with pytest.raises(OptionValueError, match=r"a finite number of seconds in \(0, 10\]"):
        bounded.convert("10.5", None, None)
    assert BoundedInt(min=0).convert("0", None, None) == 0
    with pytest.raises(OptionValueError, match="must be between 1 and 5 frames, got 6"):
        BoundedInt(min=1, max=5, unit="frames").convert("6", None, None)


def test_click_usage_errors_are_one_line_too(tmp_path):
    root = tmp_path / "root"
    assert "No such option '--bogus'" in one_error_line(invoke("info", "--bogus"))
    assert "Missing option '--split'" in one_error_line(invoke("validate", "--root", root))
    line = one_error_line(
        invoke("download", "--root", root, "--split", "test", "--distributor", "x")
    )
    assert "--distributor" in line
    assert "No such command 'bogus'" in one_error_line(invoke("bogus"))
    # the installed entry point prints the same line
    run = subprocess.run(
        [sys.executable, "-m", "mrw.cli", "extract-frames", "--split", "test", "--fps", "nan"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 2 and run.stdout == ""
    assert run.stderr.startswith("mrw: error: --fps must be a positive number, got nan")
    assert len(run.stderr.splitlines()) == 1, run.stderr


# -- one meaning per option name -------------------------------------------------------------------
def test_an_option_name_is_a_flag_everywhere_or_takes_a_value_everywhere():
    kinds: dict[str, set[bool]] = {}
    for command in main.commands.values():
        for option in visible_options(command):
            for name in option.opts:
                kinds.setdefault(name, set()).add(option.is_flag)
    mixed = {name for name, seen in kinds.items() if len(seen) > 1}
    assert not mixed, mixed
    assert kinds["--json"] == {True} and kinds["--plot"] == {True}


def test_workers_help_says_what_runs_at_once():
    for name, unit in [
        ("download", "Download threads"),
        ("validate", "Threads decoding rows"),
        ("extract-frames", "Threads decoding videos"),
        ("extract-features", "DataLoader worker processes"),
        ("preview", "Threads making strips"),
    ]:
        workers = next(p for p in main.commands[name].params if p.name == "workers")
        assert workers.help.startswith(unit), (name, workers.help)


def _submission(folder: Path, n: int = 12) -> Path:
    rng = np.random.default_rng(0)
    items = rng.standard_normal((n, 1, 8)).astype(np.float32)
    folder.mkdir(parents=True)
    np.save(folder / "items.npy", items)
    np.save(folder / "sentences.npy", items + 0.1 * rng.standard_normal(items.shape).astype("f4"))
    preds = folder / "preds.json"
    preds.write_text(
        json.dumps(
            {
                "dataset": "mrw",
                "split": "test",
                "model": "mine",
                "embeddings": {"items": "items.npy", "sentences": "sentences.npy"},
            }
        )
    )
    return preds


@pytest.fixture
def evaluated_root(tmp_path):
    root = tmp_path / "root"
    rows = [
        {"id": f"v{i:02d}", "sentences": [f"mrw {i}"], "url": None, "protocol_sentences": [0]}
        for i in range(12)
    ]
    write_catalog(rows, root, "mrw", "test")
    return root, _submission(tmp_path / "sub")


def test_evaluate_writes_results_with_json_out(tmp_path, evaluated_root):
    root, preds = evaluated_root
    out = tmp_path / "o" / "results.json"
    result = invoke("evaluate", "--root", root, preds, "--json-out", out)
    assert result.exit_code == 0, result.output
    assert json.loads(out.read_text())["model"] == "mine" and result.stderr == ""
    line = one_error_line(
        invoke("evaluate", "--root", root, preds, "--json-out", tmp_path / "r.txt")
    )
    assert "--json-out" in line and "expected a .json file name" in line


def test_old_json_and_plot_spellings_of_evaluate_still_work_with_a_warning(
    tmp_path, evaluated_root
):
    root, preds = evaluated_root
    out, png = tmp_path / "results.json", tmp_path / "curves.png"
    result = invoke("evaluate", "--root", root, preds, "--json", out, "--plot", png)
    assert result.exit_code == 0, result.output
    assert json.loads(out.read_text())["model"] == "mine"
    assert png.read_bytes().startswith(b"\x89PNG")
    assert "--json RESULTS.json is deprecated: use --json-out" in result.stderr
    assert "--plot CURVES.png is deprecated: use --plot-out" in result.stderr
    help_text = " ".join(invoke("evaluate", "--help").output.split())
    assert (
        "--json-out" in help_text and "--json " not in help_text and "deprecated" not in help_text
    )
    result = invoke("evaluate", "--root", root, preds, "--json", out, "--json-out", out)
    assert result.exit_code == 2 and "give --json-out only" in result.stderr


# -- --split wherever a split is meant --------------------------------------------------------------
@pytest.mark.parametrize("name", ["download", "validate", "extract-frames", "extract-features"])
def test_stage_commands_need_a_split(tmp_path, name):
    root = tmp_path / "root"
    assert "Missing option '--split'" in one_error_line(invoke(name, "--root", root))
    assert not root.exists()


def test_build_vocab_needs_a_split_unless_reference(tmp_path):
    root = tmp_path / "root"
    catalog(root, "train")
    line = one_error_line(invoke("build-vocab", "--root", root))
    assert "--split is needed" in line and not (root / "mrw" / "vocab-train.json").exists()
    assert invoke("build-vocab", "--root", root, "--split", "train").exit_code == 0
    assert "drop --split" in one_error_line(
        invoke("build-vocab", "--root", root, "--reference", "--split", "train")
    )
    assert invoke("build-vocab", "--root", root, "--reference").exit_code == 0
    assert (root / "mrw" / "vocab-reference.json").exists()


def test_preview_needs_a_split_unless_a_submission_names_it(tmp_path):
    root = tmp_path / "root"
    catalog(root, "test")
    assert "--split is needed" in one_error_line(
        invoke("preview", "--root", root, "--out", tmp_path / "site")
    )
    assert not (tmp_path / "site").exists()


def test_every_split_option_is_required_or_says_when_it_is_not():
    optional = {}
    for name, command in main.commands.items():
        for param in command.params:
            if param.name == "split" and not param.required:
                optional[name] = param.help
    # info filters by split (default all); the others name the exception in their help
    assert set(optional) == {"info", "build-vocab", "preview"}, optional
    assert "required unless --reference" in optional["build-vocab"]
    assert "required unless --preds" in optional["preview"]


def test_split_names_are_checked_and_valid_is_val(tmp_path):
    root = tmp_path / "root"
    line = one_error_line(invoke("info", "--root", root, "--failures", "--split", "bogus"))
    assert "unknown split 'bogus'" in line
    catalog(root, "val")
    result = invoke("build-vocab", "--root", root, "--split", "valid")
    assert result.exit_code == 0, result.output
    assert (root / "mrw" / "vocab-val.json").exists()
