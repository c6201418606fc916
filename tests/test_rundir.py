import json

import pytest

from ddoq_ray.rundir import SUCCESS, stage_done, stage_writer


def test_commit_is_atomic_and_fingerprinted(tmp_path):
    with stage_writer(tmp_path, "encode", "fp1") as (out, summary):
        (out / "a.txt").write_text("x")
        summary["n"] = 3
        assert not (tmp_path / "encode").exists()  # nothing visible before the commit
    assert stage_done(tmp_path, "encode", "fp1") and not stage_done(tmp_path, "encode", "fp2")
    marker = json.loads((tmp_path / "encode" / SUCCESS).read_text())
    assert marker["n"] == 3 and marker["fingerprint"] == "fp1"


def test_failure_keeps_previous_output_and_leaves_no_temp(tmp_path):
    with stage_writer(tmp_path, "quantize", "fp1") as (out, _):
        (out / "v1").write_text("1")
    with pytest.raises(RuntimeError), stage_writer(tmp_path, "quantize", "fp2") as (out, _):
        (out / "v2").write_text("2")
        raise RuntimeError("disk full")
    assert (tmp_path / "quantize" / "v1").exists() and stage_done(tmp_path, "quantize", "fp1")
    assert not list(tmp_path.glob(".quantize.tmp-*"))


def test_stale_temp_from_killed_driver_is_cleaned(tmp_path):
    (tmp_path / ".decode.tmp-dead").mkdir(parents=True)
    with stage_writer(tmp_path, "decode", "fp") as (out, _):
        pass
    assert not (tmp_path / ".decode.tmp-dead").exists() and stage_done(tmp_path, "decode", "fp")
