"""Find data and models offline (an assets root such as ``../shared``) or online (hub ids, URIs).

A reference is resolved in this order:
1. ``assets:REL`` → ``<assets root>/REL`` (must exist);
2. an existing local path (absolute or relative to the working directory);
3. a hub id ``org/name`` → ``<assets root>/models/<name>`` when that local copy exists;
4. anything else is returned unchanged (a hub id for ``from_pretrained`` or a ``s3://``/``gs://`` URI).
With ``HF_HUB_OFFLINE=1`` step 4 fails for hub ids, listing every place that was searched.
"""

from __future__ import annotations

import os
from pathlib import Path

from .errors import DdoqError

PACKAGE_ROOT = Path(__file__).resolve().parent.parent


class AssetNotFoundError(DdoqError, FileNotFoundError):
    """A data/model reference could not be resolved; the message lists where it looked."""


def assets_root(configured: str | None = None) -> Path | None:
    """The assets folder: ``configured`` → ``$DDOQ_ASSETS`` → ``./../shared`` → ``<repo>/../shared``."""
    explicit = [("assets_root", configured), ("$DDOQ_ASSETS", os.environ.get("DDOQ_ASSETS"))]
    for what, c in explicit:  # an explicit setting that points nowhere is an error, not a fallback
        if c:
            if not Path(c).is_dir():
                raise AssetNotFoundError(f"{what} {c!r} is not a directory (fix it, or unset it to use ../shared)")
            return Path(c).resolve()
    for c in (Path.cwd().parent / "shared", PACKAGE_ROOT.parent / "shared"):
        if c.is_dir():
            return c.resolve()
    return None


NAMED_TEACHER_KINDS = ("timm", "torchvision")


def is_named_teacher(ref: str | None) -> bool:
    """``timm:<name>`` or ``torchvision:<name>``: a library model with pretrained weights (fetched and cached by
    the library), not a file to resolve."""
    kind, _, name = (ref or "").partition(":")
    return kind in NAMED_TEACHER_KINDS and bool(name)


def is_uri(ref: str) -> bool:
    return "://" in ref


def resolve(ref: str, root: Path | None, kind: str = "model") -> str:
    """Resolve a data or model reference to a local path, URI or hub id (see module docstring).

    Raises:
        AssetNotFoundError: ``assets:`` ref missing, or a hub id that is not available offline.
    """
    searched: list[str] = []
    if ref.startswith("assets:"):
        rel = ref[len("assets:"):].lstrip("/")
        if root is None:
            raise AssetNotFoundError(f"{ref!r}: no assets root (pass assets_root, or set $DDOQ_ASSETS)")
        p = root / rel
        if p.exists():
            return str(p)
        raise AssetNotFoundError(f"{ref!r}: {p} does not exist")
    if is_uri(ref):
        return ref
    p = Path(ref).expanduser()
    searched.append(str(p.resolve()))
    if p.exists():
        return str(p.resolve())
    if kind == "model" and ref.count("/") == 1 and root is not None:
        local = root / "models" / ref.split("/")[1]
        searched.append(str(local))
        if local.exists():
            return str(local)
    if kind == "model" and os.environ.get("HF_HUB_OFFLINE") == "1":
        raise AssetNotFoundError(
            f"model {ref!r} not found offline; looked in: {', '.join(searched)}. "
            "Put a local copy at <assets root>/models/<name> or unset HF_HUB_OFFLINE to download it."
        )
    if kind == "data":
        raise AssetNotFoundError(f"data {ref!r} not found; looked in: {', '.join(searched)}")
    return ref
