"""The YAML grammar of a Tune search space (``tune.search_space``), checked without importing Ray.

A ``train`` field maps to a constant or to a one-key sampler mapping, e.g. ``lr: {loguniform: [1.0e-4, 1.0e-2]}``,
``weight_scheme: {choice: [uniform, mass]}``, ``epochs: {grid: [50, 100]}``. Argument counts follow ``ray.tune``'s
samplers (``uniform(lower, upper)``, ``quniform(lower, upper, q)``, ...); ``choice`` takes a list and ``grid``
becomes ``tune.grid_search`` (:func:`ddoq_ray.tune.space.param_space` builds them).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

# Sampler name -> number of arguments (None: a list of values).
SAMPLERS = {"uniform": 2, "loguniform": 2, "quniform": 3, "qloguniform": 3, "randint": 2, "lograndint": 2,
            "qrandint": 3, "randn": 2, "choice": None, "grid": None}


def check_space(space: dict[str, Any], fields: set[str] | dict, check_value: Callable[[str, Any], None]) -> None:
    """Validate a search space.

    Args:
        fields: the sweepable field names. check_value: raises ``ValueError`` for an invalid value of a field.
    Raises:
        ValueError: unknown field, unknown sampler, wrong argument count, or an invalid ``choice``/``grid`` value or
            constant (the message names ``search_space.<field>``).
    """
    for key, spec in space.items():
        if key not in fields:
            raise ValueError(f"search_space key {key!r} is not a train field ({', '.join(fields)})")
        if isinstance(spec, dict):
            if len(spec) != 1 or next(iter(spec)) not in SAMPLERS:
                raise ValueError(f"search_space.{key}: expected one of {{{', '.join(SAMPLERS)}}}: [args], got {spec}")
            kind, args = next(iter(spec.items()))
            if not isinstance(args, list) or not args:
                raise ValueError(f"search_space.{key}.{kind}: expected a non-empty list, got {args!r}")
            n = SAMPLERS[kind]
            if n is not None and len(args) != n:
                raise ValueError(f"search_space.{key}.{kind}: expected {n} numbers, got {args}")
            values = args if kind in ("choice", "grid") else []
        else:
            values = [spec]
        for val in values:
            try:
                check_value(key, val)
            except ValueError as e:
                raise ValueError(f"search_space.{key}: value {val!r} invalid: {e}") from e
