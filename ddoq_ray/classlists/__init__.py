"""ImageNet-1K class order and names, and the fastai ImageNet subsets, as WNID lists shipped with the package.

- ``imagenet1k.txt``: 1000 lines ``<wnid> <names>`` in the ILSVRC-2012 label order (index = line number = the
  sorted WNID order used by torchvision/timm ImageFolder and by DiT's class labels). Same format and content as
  ``LOC_synset_mapping.txt`` of the ImageNet (Kaggle ILSVRC localization) release; names are the WordNet synonyms,
  as in D4M's ``label-prompt/imagenet_classes.txt``. Two classes share the name ``crane`` there (134, the bird, and
  517, the machine); :func:`imagenet_names` tells them apart (:data:`DISAMBIGUATED`) so their prompts differ.
- ``imagenette.txt`` / ``imagewoof.txt``: 10 WNIDs each, as defined by fastai in https://github.com/fastai/imagenette
  (README "Imagenette" / "Imagewoof" class lists; the same lists as ``fastai.data.external`` and the
  ``imagenette2``/``imagewoof2`` archives' folder names).
"""

from __future__ import annotations

import re
from functools import cache
from pathlib import Path

HERE = Path(__file__).resolve().parent
WNID = re.compile(r"^n\d{8}$")
SUBSETS = ("imagenette", "imagewoof")
# WordNet names that occur twice in ImageNet-1K, made distinct for prompts (the file stays a verbatim copy).
DISAMBIGUATED = {"n02012849": "crane (bird)", "n03126707": "crane (machine)"}


def _lines(name: str) -> list[str]:
    text = (HERE / name).read_text(encoding="utf-8")
    return [s.strip() for s in text.splitlines() if s.strip() and not s.lstrip().startswith("#")]


@cache
def imagenet_classes() -> tuple[tuple[str, str], ...]:
    """``((wnid, names), ...)`` for the 1000 ImageNet-1K classes in label order."""
    return tuple(tuple(line.split(" ", 1)) for line in _lines("imagenet1k.txt"))


def imagenet_index() -> dict[str, int]:
    """WNID -> ImageNet-1K label index (0..999)."""
    return {w: i for i, (w, _) in enumerate(imagenet_classes())}


def imagenet_names() -> dict[str, str]:
    """WNID -> human-readable synonyms, e.g. ``n01440764`` -> ``tench, Tinca tinca``; all 1000 distinct (the two
    ``crane`` classes become ``crane (bird)`` / ``crane (machine)``, :data:`DISAMBIGUATED`)."""
    return {**dict(imagenet_classes()), **DISAMBIGUATED}


def subset_wnids(name: str) -> list[str]:
    """The 10 WNIDs of ``imagenette`` or ``imagewoof`` (fastai order)."""
    if name not in SUBSETS:
        raise ValueError(f"unknown ImageNet subset {name!r}; known: {', '.join(SUBSETS)}")
    return _lines(f"{name}.txt")


def is_wnid(name: str) -> bool:
    return bool(WNID.match(name))
