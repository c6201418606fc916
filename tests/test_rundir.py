"""Stage commits: attempt folders + one pointer object written last (same code path for disks and buckets)."""

import json

import pytest

from ddoq_ray import rundir, storage
from ddoq_ray.rundir import SUCCESS, collect_garbage, stage_done, stage_path, stage_writer


def _write(loc, name, text):
    storage.write_text(storage.join(loc, name), text)


def test_commit_is_a_pointer_to_the_attempt(tmp_path):
    run = str(tmp_path)
    with stage_writer(run, "encode", "fp1") as (out, summary):
        _write(out, "a.txt", "x")
        summary["n"] = 3
        assert not (tmp_path / "encode" / SUCCESS).exists()  # nothing committed before the body returns
    assert stage_done(run, "encode", "fp1") and not stage_done(run, "encode", "fp2")
    marker = json.loads((tmp_path / "encode" / SUCCESS).read_text())
    assert marker["n"] == 3 and marker["fingerprint"] == "fp1" and marker["attempt"].startswith("attempt-")
    assert stage_path(run, "encode") == str(tmp_path / "encode" / marker["attempt"]) == out
    assert storage.read_text(storage.join(stage_path(run, "encode"), "a.txt")) == "x"
    assert sorted(p.name for p in (tmp_path / "encode").iterdir()) == sorted([SUCCESS, marker["attempt"]])


def test_failure_keeps_previous_output_and_removes_the_attempt(tmp_path):
    run = str(tmp_path)
    with stage_writer(run, "quantize", "fp1") as (out, _):
        _write(out, "v1", "1")
    live = stage_path(run, "quantize")
    with pytest.raises(RuntimeError), stage_writer(run, "quantize", "fp2") as (out, _):
        _write(out, "v2", "2")
        raise RuntimeError("disk full")
    assert stage_path(run, "quantize") == live and stage_done(run, "quantize", "fp1")
    assert storage.listdir(str(tmp_path / "quantize")) == sorted([SUCCESS, storage.basename(live)])


def test_crash_between_attempt_and_pointer_leaves_previous_commit_live(tmp_path, monkeypatch):
    run = str(tmp_path)
    with stage_writer(run, "decode", "fp1") as (out, _):
        _write(out, "img.png", "old")
    old = stage_path(run, "decode")

    def killed(*_a, **_k):  # the driver dies after the attempt is complete, before the pointer lands
        raise SystemExit("SIGKILL")

    monkeypatch.setattr(rundir.storage, "move", killed)
    with pytest.raises(SystemExit), stage_writer(run, "decode", "fp2") as (out, _):
        _write(out, "img.png", "new")
        new = out
    monkeypatch.undo()
    assert stage_path(run, "decode") == old and stage_done(run, "decode", "fp1")
    assert storage.read_text(storage.join(stage_path(run, "decode"), "img.png")) == "old"
    assert storage.exists(new)  # the orphaned attempt is still there (as after a real kill) ...
    with stage_writer(run, "decode", "fp2") as (out, _):
        _write(out, "img.png", "new")
    # ... until the next commit collects every stale attempt and temporary pointer
    left = storage.listdir(str(tmp_path / "decode"))
    assert left == sorted([SUCCESS, storage.basename(out)]) and storage.basename(old) not in left


def test_gc_removes_stale_attempts_and_legacy_files(tmp_path):
    run = str(tmp_path)
    (tmp_path / "metrics" / "attempt-20000101T000000-dead").mkdir(parents=True)
    (tmp_path / "metrics" / "metrics.json").write_text("{}")  # a pre-attempt layout's loose file
    with stage_writer(run, "metrics", "fp") as (out, _):
        _write(out, "metrics.json", "{}")
    assert storage.listdir(str(tmp_path / "metrics")) == sorted([SUCCESS, storage.basename(out)])
    assert collect_garbage(run, "metrics") == []


def test_resumable_stage_reuses_the_unfinished_attempt_with_the_same_fingerprint(tmp_path):
    run = str(tmp_path)
    with pytest.raises(KeyboardInterrupt), stage_writer(run, "encode", "fp", resume=True) as (out, _):
        _write(out, "shard-0.done", "1")
        first = out
        raise KeyboardInterrupt
    assert storage.exists(first)  # kept for the next run
    with stage_writer(run, "encode", "other", resume=True) as (out, summary):
        assert out != first and "resumed_attempt" not in summary  # another config: fresh attempt
        other = out
    with stage_writer(run, "encode", "fp", resume=True) as (out, summary):
        assert out != other
    # the fp attempt was garbage-collected by the "other" commit, so this one started afresh
    assert storage.exists(out) and not storage.exists(first)


def test_resume_picks_up_partial_work(tmp_path):
    run = str(tmp_path)
    with pytest.raises(RuntimeError), stage_writer(run, "encode", "fp", resume=True) as (out, _):
        _write(out, "shard-0.done", "1")
        first = out
        raise RuntimeError("node lost")
    with stage_writer(run, "encode", "fp", resume=True) as (out, summary):
        assert out == first and summary["resumed_attempt"] == storage.basename(first)
        assert storage.is_file(storage.join(out, "shard-0.done"))
    assert stage_path(run, "encode") == first


def test_legacy_pointer_without_attempt_resolves_to_the_stage_folder(tmp_path):
    (tmp_path / "quantize").mkdir()
    (tmp_path / "quantize" / SUCCESS).write_text(json.dumps({"fingerprint": "x"}))
    assert stage_path(str(tmp_path), "quantize") == str(tmp_path / "quantize")
    with pytest.raises(rundir.StageNotCommittedError):
        stage_path(str(tmp_path), "decode")


def test_storage_join_keeps_uri_query_and_resolves_paths(tmp_path):
    uri = "s3://bkt/runs/x?endpoint_override=127.0.0.1:9000&scheme=http"
    assert storage.join(uri, "encode", "a.json") == ("s3://bkt/runs/x/encode/a.json"
                                                     "?endpoint_override=127.0.0.1:9000&scheme=http")
    assert storage.basename(storage.join(uri, "encode")) == "encode"
    assert storage.join("rel/dir", "a").startswith("/")  # plain paths become absolute
    fs, path = storage.resolve(storage.join(uri, "encode"))
    assert path == "bkt/runs/x/encode" and type(fs).__name__ == "S3FileSystem"
    with pytest.raises(storage.StorageError, match="output_dir='foo://"):
        storage.resolve("foo://bucket/x", field="output_dir")
