"""Split and dataset names (mrw.paths) and how the command line refuses unknown ones."""

import pytest
from click.testing import CliRunner

from mrw import paths
from mrw.cli import main
from mrw.errors import UsageError


def test_split_and_dataset_names():
    assert paths.normalize_split("valid") == "val"
    with pytest.raises(UsageError):
        paths.normalize_split("dev")
    res = CliRunner().invoke(main, ["download", "--split", "dev", "--catalog-only"])
    assert res.exit_code == 2 and "unknown split 'dev'" in res.output
    res = CliRunner().invoke(main, ["download", "--dataset", "msrvtt", "--split", "test"])
    assert res.exit_code == 2
