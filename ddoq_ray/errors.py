"""One base class for every error a user can fix (bad config, data, location, missing stage, no GPU).

The CLI prints a :class:`DdoqError` as one line (``ddoq-ray: error: ...``) and exit code 2; anything else is a bug
and surfaces as a traceback. Each subclass also derives from the builtin it used to be (``ValueError``,
``FileNotFoundError``, ``RuntimeError``, ``OSError``), so ``except ValueError`` in user code keeps working.
Messages name the file, field or stage and say what to do.
"""

from __future__ import annotations


class DdoqError(Exception):
    """Base of all user-facing ddoq-ray errors."""


class ConfigError(DdoqError, ValueError):
    """A config file or override is invalid; the message names the file and field (re-exported by
    :mod:`ddoq_ray.config`)."""


class UserValueError(DdoqError, ValueError):
    """A value given by the user (config field, CLI argument, data content) is invalid."""


class DataError(DdoqError, ValueError):
    """The dataset's layout or columns are wrong; the message names the file/field and the fix."""


class FormatError(DdoqError, ValueError):
    """A WebDataset shard, CIFAR batch or HF dataset reference is unusable; the message names it and the fix."""


class StageOrderError(DdoqError, RuntimeError):
    """A stage was asked for before the stage it reads is complete for this config (``run X first``)."""


class UserRuntimeError(DdoqError, RuntimeError):
    """The environment cannot do what the config asks (cluster lacks the State API, a GPU, ...)."""
