"""Run directory layout and stage commits that work on local disks and object stores alike.

Object stores (S3, GCS) have no atomic folder rename, so a stage is never moved into place. Instead:

1. each attempt writes everything under ``<run>/<stage>/attempt-<id>/``, starting with ``_ATTEMPT.json``
   (fingerprint, start time);
2. the commit is ONE small object written last: ``<run>/<stage>/_SUCCESS.json`` with the fingerprint, the
   summary counts, the wall time and ``attempt`` (the name of the live attempt folder). It is written to a
   temporary name and moved over the old pointer (a rename on local disks, an atomic server-side copy on object
   stores), so readers see the old commit or the new one, never a torn file;
3. after the commit every other entry of ``<run>/<stage>/`` (older commits, attempts of killed drivers) is
   deleted.

Readers resolve a stage's folder with :func:`stage_path` only. A stage may also be committed as a reference to
another run's commit (:func:`share_stage`: the runs of several IPCs share one encode).

A crash anywhere before step 2 leaves the previous
commit live; a crash during step 3 leaves garbage that the next commit removes. Stages that can resume
(``resume=True``, the encode stage) reuse the newest uncommitted attempt with the same fingerprint instead of
starting a new one; the stage itself decides which of that attempt's pieces are complete.
"""

from __future__ import annotations

import time
import uuid
from contextlib import contextmanager

from . import storage
from .errors import DdoqError

SUCCESS = "_SUCCESS.json"
ATTEMPT = "_ATTEMPT.json"


class StageNotCommittedError(DdoqError, FileNotFoundError):
    """A stage's outputs were asked for, but the stage has no committed attempt in this run directory."""


def read_success(run_dir: str, stage: str) -> dict:
    """The stage's committed ``_SUCCESS.json``.

    Raises:
        StageNotCommittedError: no commit (or an unreadable pointer) for this stage.
    """
    loc = storage.join(run_dir, stage, SUCCESS)
    try:
        return storage.read_json(loc)
    except (OSError, ValueError) as e:
        raise StageNotCommittedError(f"stage {stage} is not complete in {run_dir} (no readable {SUCCESS})") from e


def committed(run_dir: str, stage: str) -> dict | None:
    """The stage's ``_SUCCESS.json``, or None when the stage was never committed."""
    try:
        return read_success(run_dir, stage)
    except StageNotCommittedError:
        return None


def stage_done(run_dir: str, stage: str, fingerprint: str) -> bool:
    """True when ``<run>/<stage>`` was committed with this fingerprint (a shared stage: and its owner's commit is
    still the one it refers to)."""
    marker = committed(run_dir, stage)
    if marker is None or marker.get("fingerprint") != fingerprint:
        return False
    return "shared_from" not in marker or _owner_attempt(marker, stage) is not None


def share_stage(owner_dir: str, run_dir: str, stage: str, fingerprint: str) -> bool:
    """Commit ``run_dir``'s ``stage`` as a reference to ``owner_dir``'s committed one (several IPCs in one run
    share one encode: :mod:`ddoq_ray.ipcs`), when the owner's commit has ``fingerprint``. The pointer holds the
    owner's marker, ``shared_from`` (the owner run) and ``shared_attempt``; :func:`stage_path` resolves to the
    owner's attempt folder, and a reference whose owner has since recomputed the stage is not done (never read).

    Returns:
        True when ``run_dir`` now has the stage (shared, or already its own with this fingerprint).
    """
    if stage_done(run_dir, stage, fingerprint):
        return True
    owner = committed(owner_dir, stage)
    if owner is None or owner.get("fingerprint") != fingerprint or "shared_from" in owner:
        return False
    summary = {k: v for k, v in owner.items() if k not in ("stage", "attempt")}
    commit(run_dir, stage, None, {**summary, "shared_from": owner_dir, "shared_attempt": owner["attempt"]})
    collect_garbage(run_dir, stage)
    return True


def _owner_attempt(marker: dict, stage: str) -> str | None:
    """The owner's live attempt of a shared stage, or None when the owner recomputed (or lost) it since."""
    owner = committed(marker["shared_from"], stage)
    if owner is None or owner.get("fingerprint") != marker.get("fingerprint"):
        return None
    return owner.get("attempt") if owner.get("attempt") == marker.get("shared_attempt") else None


def stage_path(run_dir: str, stage: str) -> str:
    """The folder (location string) holding a stage's committed outputs: ``<run>/<stage>/<live attempt>``.

    Run directories written before attempts existed (a pointer without ``attempt``) resolve to ``<run>/<stage>``.

    Raises:
        StageNotCommittedError: the stage has no commit.
    """
    marker = read_success(run_dir, stage)
    if "shared_from" in marker:  # several IPCs in one run: the owner run's folder (share_stage)
        attempt = _owner_attempt(marker, stage)
        if attempt is None:
            raise StageNotCommittedError(f"stage {stage} of {run_dir} refers to {marker['shared_from']}, whose "
                                         f"{stage} stage was recomputed or removed since; run this run again")
        return storage.join(marker["shared_from"], stage, attempt)
    attempt = marker.get("attempt")
    return storage.join(run_dir, stage, attempt) if attempt else storage.join(run_dir, stage)


def _new_attempt() -> str:
    return f"attempt-{time.strftime('%Y%m%dT%H%M%S', time.gmtime())}-{uuid.uuid4().hex[:8]}"


def _resumable_attempt(stage_dir: str, fingerprint: str, live: str | None) -> str | None:
    """Newest uncommitted attempt folder of ``stage_dir`` started with ``fingerprint`` (names sort by time)."""
    for name in reversed(storage.listdir(stage_dir)):
        if not name.startswith("attempt-") or name == live:
            continue
        try:
            if storage.read_json(storage.join(stage_dir, name, ATTEMPT)).get("fingerprint") == fingerprint:
                return name
        except (OSError, ValueError):
            continue
    return None


def collect_garbage(run_dir: str, stage: str) -> list[str]:
    """Delete everything in ``<run>/<stage>/`` except the pointer and the live attempt; returns what was removed."""
    stage_dir = storage.join(run_dir, stage)
    marker = committed(run_dir, stage)
    keep = {SUCCESS, (marker or {}).get("attempt")}
    removed = []
    for name in storage.listdir(stage_dir):
        if name in keep:
            continue
        loc = storage.join(stage_dir, name)
        if storage.is_dir(loc):
            storage.delete_dir(loc)
        else:
            storage.delete_file(loc)
        removed.append(name)
    return removed


def commit(run_dir: str, stage: str, attempt: str, summary: dict) -> dict:
    """Make ``attempt`` the live output of ``stage`` by writing the pointer (the one step that commits)."""
    stage_dir = storage.join(run_dir, stage)
    marker = {"stage": stage, **summary, "attempt": attempt}
    tmp = storage.join(stage_dir, f"{SUCCESS}.tmp-{uuid.uuid4().hex[:8]}")
    storage.write_json(tmp, marker)
    storage.move(tmp, storage.join(stage_dir, SUCCESS))
    return marker


@contextmanager
def stage_writer(run_dir: str, stage: str, fingerprint: str, resume: bool = False):
    """Yield ``(attempt folder, summary dict)``; on success commit the attempt with the summary, then GC.

    Args:
        resume: reuse the newest uncommitted attempt with the same fingerprint (its partial outputs stay for the
            stage to pick up; ``summary["resumed_attempt"]`` names it) and keep the attempt when the body fails.
            Without it a failed attempt is deleted.
    On an exception nothing is committed and the previous commit (if any) stays live.
    """
    stage_dir = storage.join(run_dir, stage)
    live = (committed(run_dir, stage) or {}).get("attempt")
    name = _resumable_attempt(stage_dir, fingerprint, live) if resume else None
    summary: dict = {}
    if name is None:
        name = _new_attempt()
        storage.makedirs(storage.join(stage_dir, name))
        storage.write_json(storage.join(stage_dir, name, ATTEMPT), {"fingerprint": fingerprint,
                                                                   "started": time.time()})
    else:
        summary["resumed_attempt"] = name
    attempt = storage.join(stage_dir, name)
    t0 = time.time()
    try:
        yield attempt, summary
    except BaseException:
        if not resume:
            try:
                storage.delete_dir(attempt)
            except OSError:  # storage gone too: the next commit's GC removes it
                pass
        raise
    commit(run_dir, stage, name, {"fingerprint": fingerprint, "wall_s": round(time.time() - t0, 2), **summary})
    collect_garbage(run_dir, stage)
