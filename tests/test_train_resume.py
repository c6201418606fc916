"""The train stage resumes per student: rows saved as students finish are taken back by a re-run of the same
attempt, and only the missing students train (a crash 10 min into a 40-min comparison no longer loses them)."""

from __future__ import annotations

from ddoq_ray import evaluate, stages, storage
from ddoq_ray.config import TrainConfig


def test_resumed_train_trains_only_the_missing_students(tmp_path, monkeypatch):
    calls = []

    def fake_train_one(inp, tcfg, method, seed, out, tag=""):
        calls.append((method, seed))
        return {"method": method, "seed": seed, "top1": 0.1 * seed}

    monkeypatch.setattr(evaluate, "train_one", fake_train_one)
    tcfg = TrainConfig(concurrent_students=1)
    jobs = [(tcfg, m, s) for m in ("random", "ddoq") for s in (0, 1)]
    out = str(tmp_path / "attempt")
    storage.write_json(storage.join(out, "students", "random-seed1.json"),
                       {"method": "random", "seed": 1, "top1": 0.42})  # finished before the crash
    rows = evaluate.train_many(None, jobs, out, keep=True)
    assert calls == [("random", 0), ("ddoq", 0), ("ddoq", 1)]
    assert [(r["method"], r["seed"], r["top1"]) for r in rows] == [
        ("random", 0, 0.0), ("random", 1, 0.42), ("ddoq", 0, 0.0), ("ddoq", 1, 0.1)]
    assert sorted(storage.listdir(storage.join(out, "students"))) == [
        "ddoq-seed0.json", "ddoq-seed1.json", "random-seed0.json", "random-seed1.json"]
    calls.clear()
    assert evaluate.train_many(None, jobs, out, keep=True) == rows and calls == []  # all four saved
    assert stages.REGISTRY["train"].resumable
