"""The two kinds of failure the CLI distinguishes (interfaces.md, section 1)."""


class MrwError(Exception):
    """Base class of the package's own errors."""


class UsageError(MrwError):
    """Bad usage or bad input: the CLI prints one line and exits 2."""


class FatalError(MrwError):
    """A runtime failure that stops the whole command: the CLI exits 1."""
