"""The `mrw` command line: parses options and calls one function per command.

Exit codes (interfaces.md, section 1): 0 success, 1 runtime failure, 2 bad usage or bad input,
each failure one `mrw: error:` line on stderr. Options follow one convention across commands
(mrw/cli/options.py): `--root` reads MRW_HOME, every default shows in the help, numbers are
checked against their range as they are parsed.
"""

from __future__ import annotations

from typing import Any

import click

from mrw.cli import benchmark, inspection, stages
from mrw.cli.exits import disk_full, handle_errors, one_line

__all__ = ["disk_full", "handle_errors", "main"]


class _Group(click.Group):
    """click's own usage errors (unknown option, missing --split, a value out of range) end as
    the package's errors do: one line on stderr, exit 2."""

    def make_context(
        self,
        info_name: str | None,
        args: list[str],
        parent: click.Context | None = None,
        **extra: Any,
    ) -> click.Context:
        try:
            return super().make_context(info_name, args, parent=parent, **extra)
        except click.UsageError as e:
            raise one_line(e) from None

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except click.UsageError as e:
            raise one_line(e) from None


@click.group(
    "mrw",
    cls=_Group,
    context_settings={"help_option_names": ["-h", "--help"], "show_default": True},
)
@click.version_option(package_name="mrw")
def main() -> None:
    """Datasets and the standard benchmark for cross-modal retrieval on MRW, TGIF and MS-COCO."""


for _command in (*inspection.COMMANDS, *stages.COMMANDS, *benchmark.COMMANDS):
    main.add_command(_command)
