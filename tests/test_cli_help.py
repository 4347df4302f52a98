"""`mrw --help` and every command's help: each command and option described."""

import subprocess
import sys

import click
import pytest
from click.testing import CliRunner

from mrw.cli import main


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
