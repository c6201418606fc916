"""Id checks that hold a few bytes per row, not a hash table of the id strings (the driver's memory at ImageNet
size: docs/benchmarks.md, ImageNet-shaped stand-in).

``pyarrow.compute.value_counts`` / ``count_distinct`` / ``is_in`` over 1.28 M ids each build a hash table holding
a copy of every string (~70 bytes per row, more than half the index itself); here the ids are hashed a chunk at a
time into one int64 per row and only rows whose hashes collide are compared as strings.
"""

from __future__ import annotations

from collections import Counter

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

CHUNK = 65_536  # ids turned into Python strings at a time (a few MB)


def id_hashes(ids: pa.ChunkedArray | pa.Array) -> np.ndarray:
    """int64 ``[n]``: Python's ``hash`` of each id (stable within one process, which is all a duplicate check
    needs), computed ``CHUNK`` ids at a time."""
    out = np.empty(len(ids), dtype=np.int64)
    for start in range(0, len(ids), CHUNK):
        part = ids.slice(start, CHUNK).to_pylist()
        out[start:start + len(part)] = np.fromiter(map(hash, part), dtype=np.int64, count=len(part))
    return out


def duplicate_positions(hashes: np.ndarray) -> np.ndarray:
    """int64 ``[m]``, sorted: the rows whose 64-bit hash (:func:`id_hashes`) equals another row's: every duplicate
    id is among them (with any hash collision, which a string comparison of these rows tells apart)."""
    order = np.argsort(hashes, kind="stable")
    hs = hashes[order]
    same = np.flatnonzero(hs[1:] == hs[:-1])
    del hs
    return np.unique(np.concatenate([order[same], order[same + 1]])).astype(np.int64)


def duplicate_ids(ids: pa.ChunkedArray | pa.Array, limit: int = 10) -> tuple[int, list[str]]:
    """How many distinct ids occur more than once, and up to ``limit`` of them (sorted).

    Exact: rows whose 64-bit hashes collide are compared as strings, so a hash collision is never reported as a
    duplicate. Memory: ~24 bytes per row (hashes, their sort order), freed on return.
    """
    rows = duplicate_positions(id_hashes(ids))
    if not rows.size:
        return 0, []
    counts = Counter(ids.take(pa.array(rows)).to_pylist())
    dup = sorted(v for v, c in counts.items() if c > 1)
    return len(dup), dup[:limit]


def same_ids(got: pa.ChunkedArray | pa.Array, want: pa.ChunkedArray | pa.Array) -> tuple[list[str], list[str]]:
    """Compare two small id columns (one encode shard) as multisets.

    Returns:
        ``(missing, extra)``: ids of ``want`` absent from ``got`` and ids of ``got`` not in ``want`` (a duplicate
        counts as extra), each sorted; both empty when the two hold exactly the same ids.
    """
    got, want = (a.combine_chunks() if isinstance(a, pa.ChunkedArray) else a for a in (got, want))
    g, w = (pc.array_sort_indices(a) for a in (got, want))
    g_sorted, w_sorted = pc.take(got, g), pc.take(want, w)
    if len(got) == len(want) and g_sorted.equals(w_sorted):
        return [], []
    cg, cw = Counter(g_sorted.to_pylist()), Counter(w_sorted.to_pylist())
    return sorted((cw - cg).elements()), sorted((cg - cw).elements())
