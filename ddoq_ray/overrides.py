"""Reading a config document, ``--set key=value`` overrides and config error messages (a leaf of
:mod:`ddoq_ray.config`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from .errors import ConfigError


def _parse_value(raw: str) -> Any:
    """`--set` values are YAML scalars/lists: `3`, `true`, `[0, 1]`, `null`, `runs/x`."""
    return yaml.safe_load(raw)


def apply_overrides(doc: dict, overrides: list[str]) -> dict:
    """Apply ``a.b.c=value`` strings to a nested dict (in place) and return it.

    Raises:
        ConfigError: an override without ``=``.
    """
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"--set {item!r}: expected key=value, e.g. --set train.epochs=10")
        key, raw = item.split("=", 1)
        node = doc
        parts = key.strip().split(".")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise ConfigError(f"--set {item!r}: {p!r} is not a section")
        node[parts[-1]] = _parse_value(raw)
    return doc


def format_errors(source: str, err) -> str:
    """A pydantic ``ValidationError`` as lines ``field: message`` under ``invalid config <source>:``."""
    lines = [f"invalid config {source}:"]
    for e in err.errors():
        loc = ".".join(str(x) for x in e["loc"])
        unknown = e["type"] == "extra_forbidden"
        msg = "unknown key (check spelling; see configs/ for valid keys)" if unknown else e["msg"]
        lines.append(f"  {loc}: {msg}")
    return "\n".join(lines)


def read_doc(path: str | Path, overrides: list[str] | None = None) -> dict:
    """The YAML document of a run config (a local path or a URI) with ``--set`` overrides applied, unvalidated.

    Raises:
        ConfigError: missing file, bad YAML, a top level that is not a mapping.
    """
    from . import storage

    path = str(path)
    if not storage.is_file(path):
        raise ConfigError(f"config file not found: {path} (see configs/ for examples)")
    try:
        doc = yaml.safe_load(storage.read_text(path)) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {e}") from e
    if not isinstance(doc, dict):
        raise ConfigError(f"{path}: top level must be a mapping of sections (data, encode, ...)")
    return apply_overrides(doc, overrides or [])
