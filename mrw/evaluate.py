"""`mrw.evaluate`, the import path users know: everything public of the `mrw.evaluation` package."""

from mrw.evaluation import *  # noqa: F403
from mrw.evaluation import __all__  # noqa: F401
