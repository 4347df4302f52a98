"""A small synthetic release in each official format (`release`) and a local fault-injecting
HTTP server for it (`server`): what `make demo` and the tests download from."""

from mrw.demo.release import (
    COLOURS,
    DEFAULT_COUNTS,
    FAULTS,
    SERVER_FAULTS,
    Clip,
    write_sample_release,
)
from mrw.demo.server import SampleServer

__all__ = [
    "COLOURS",
    "DEFAULT_COUNTS",
    "FAULTS",
    "SERVER_FAULTS",
    "Clip",
    "SampleServer",
    "write_sample_release",
]
