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


def test_gain_over_random_is_the_per_seed_paired_difference():
    from ddoq_ray.results import add_gains, results_table

    methods = {"random": {"top1": [0.30, 0.32, 0.31], "seeds": [0, 1, 2], "top1_mean": 0.31, "top1_std": 0.01},
               "herding": {"top1": [0.35, 0.36, 0.36], "seeds": [0, 1, 2], "top1_mean": 0.3567, "top1_std": 0.006},
               "ddoq": {"top1": [0.31, 0.31], "seeds": [0, 2], "top1_mean": 0.31, "top1_std": 0.0}}
    add_gains(methods)
    g = methods["herding"]["gain_over_random"]
    assert g["n"] == 3 and abs(g["mean"] - (0.05 + 0.04 + 0.05) / 3) < 1e-12 and methods["herding"]["beats_random"]
    d = methods["ddoq"]["gain_over_random"]  # paired on seeds 0 and 2 only: +0.01, 0.0
    assert d["n"] == 2 and abs(d["mean"] - 0.005) < 1e-12 and not methods["ddoq"]["beats_random"]
    assert methods["random"]["gain_over_random"]["mean"] == 0
    table = results_table({"ipc": 10, "methods": methods})
    assert "| herding | — | — | — | 10 | — | 35.67 ± 0.60 (n=3) | +4.67 ± 0.58 |" in table
