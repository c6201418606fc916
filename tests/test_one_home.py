"""One home for every fact (issue 13): the caches and shared values that used to go silently stale or disagree.

- the teacher is a committed stage keyed by the data, classes, size and epochs (a teacher of other classes is
  never reused);
- the cross-architecture matrix is a committed stage keyed by everything its students read, and the train
  stage's commits do not delete it;
- the random subset is drawn once: its W2, the random students, the metrics and the report all use it;
- the CLI prints user errors as one line and lets bugs surface as tracebacks.
"""

import numpy as np
import pytest
import torch

from ddoq_ray import storage
from ddoq_ray.artifacts.latents import ids_by_class, read_class_latents
from ddoq_ray.artifacts.subsets import random_subset, read_subset_ids, read_w2
from ddoq_ray.config import load_config
from ddoq_ray.errors import DdoqError, StageOrderError
from ddoq_ray.pipeline import Run, run_all, run_stage
from ddoq_ray.quantization import w2
from ddoq_ray.rundir import committed, stage_path
from ddoq_ray.stages import fingerprint

TINY = ["data.class_subset=[0,3]", "data.max_per_class=24", "data.max_test_per_class=20", "quantize.ipc=3",
        "train.epochs=2", "train.seeds=[0,1]", "train.cpus_per_worker=1", "train.checkpoint_every=5",
        "metrics.enabled=false"]


@pytest.fixture(scope="module")
def tiny_run(ray_session, assets, tmp_path_factory):
    out = tmp_path_factory.mktemp("one_home") / "run"
    cfg = load_config("configs/smoke.yaml", [f"output_dir={out}", f"assets_root={assets}", *TINY])
    return cfg, str(out), run_all(cfg)


def test_random_subset_is_drawn_once_and_its_w2_is_of_those_images(tiny_run):
    cfg, out, res = tiny_run
    sub = stage_path(out, "subsets")
    by_class = ids_by_class(stage_path(out, "encode"))
    for seed in (0, 1):
        ids = read_subset_ids(sub, seed)
        assert ids == random_subset(by_class, 3, seed) and len(ids) == 6
    # The W2 is that of the chosen latents, recomputed here from the encode artifact.
    for r in read_w2(sub):
        all_ids, z = read_class_latents(stage_path(out, "encode"), r["label"])
        chosen = set(read_subset_ids(sub, r["seed"]))
        idx = [j for j, i in enumerate(all_ids) if i in chosen]
        assert r["K"] == 3 and r["w2"] == pytest.approx(w2(z, z[idx], np.full(3, 1 / 3)), rel=1e-9)
    # results.json's random W2 is the mean over the student seeds of exactly those subsets.
    for row in res["w2_per_class"]:
        per_seed = [x["w2"] for x in read_w2(sub) if x["label"] == row["label"]]
        assert row["w2_random"] == pytest.approx(np.mean(per_seed))
    # The random students trained on those images (n_train), and the report's random row shows seed 0's.
    rows = storage.read_parquet(storage.join(stage_path(out, "train"), "students.parquet")).to_pylist()
    assert {r["n_train"] for r in rows if r["method"] == "random"} == {6}


def test_method_set_random_is_the_subsets_artifact(tiny_run):
    from ddoq_ray.artifacts.methods import method_set, subset_ids
    from ddoq_ray.artifacts.synthetic import load_synthetic

    cfg, out, _ = tiny_run
    run = Run(cfg)
    syn = load_synthetic(stage_path(out, "decode"), 32)
    s = method_set("random", 1, cfg.train, run_dir=out, train_index=run.train_index, image_column="image",
                   ipc=3, syn=syn)
    assert len(s["labels"]) == 6 and np.all(s["weights"] == 1)
    assert subset_ids(out, 3, 1) == read_subset_ids(stage_path(out, "subsets"), 1)
    # A seed the stage did not draw (Tune's) comes from the same function over the same ids.
    assert subset_ids(out, 3, 7) == random_subset(ids_by_class(stage_path(out, "encode")), 3, 7)


def test_teacher_of_other_classes_is_never_reused(tiny_run, tmp_path):
    """A teacher trained by ddoq-ray (train.teacher null) is keyed by data and classes: another class_subset in the
    same run directory trains a new one (main used to reuse <run>/teacher/<arch>-e<E>-s<seed>.pt)."""
    cfg, _, _ = tiny_run
    base = [f"output_dir={tmp_path / 'run'}", f"assets_root={cfg.assets_root}", *TINY, "train.teacher=null",
            "train.teacher_arch=resnet20_cifar", "train.teacher_epochs=1"]
    a = load_config("configs/smoke.yaml", base)
    b = load_config("configs/smoke.yaml", [*base, "data.class_subset=[1,2]"])
    assert fingerprint(a, "teacher") != fingerprint(b, "teacher")
    states = []
    for c in (a, b):
        run = Run(c)
        run.prepare()
        assert run_stage(run, "teacher")
        d = stage_path(run.dir, "teacher")
        states.append(torch.load(d + "/teacher.pt", weights_only=True))
        assert storage.read_json(storage.join(d, "teacher.json"))["kind"] == "trained"
    assert not run_stage(Run(b), "teacher")  # same config: the committed teacher is reused
    assert any(not torch.equal(states[0][k], states[1][k]) for k in states[0])
    assert fingerprint(a, "teacher") != fingerprint(load_config("configs/smoke.yaml", [*base, "train.image_size=16"]),
                                                    "teacher")


def test_matrix_fingerprint_changes_with_what_determines_it(tiny_run):
    cfg, out, _ = tiny_run
    extra = {"archs": ["convnet3"]}
    base = fingerprint(cfg, "matrix", extra)
    assert fingerprint(cfg, "matrix", dict(extra)) == base
    # A changed weight scheme (or temperature, lr, teacher, decode...) is a new matrix, never the old numbers.
    changed = load_config("configs/smoke.yaml", [f"output_dir={out}", f"assets_root={cfg.assets_root}", *TINY,
                                                 "train.weight_scheme=sqrt_mass"])
    assert fingerprint(changed, "matrix", extra) != base
    assert fingerprint(cfg, "matrix", {"archs": ["convnet3", "resnet20_cifar"]}) != base


@pytest.mark.slow  # trains the matrix's 6 students and re-commits train: ~2.7 min on the 2-core machine
def test_matrix_is_a_keyed_stage_that_train_commits_keep(tiny_run, caplog):
    cfg, out, _ = tiny_run
    run = Run(cfg)
    extra = {"archs": ["convnet3"]}
    assert run_stage(run, "matrix", extra=extra)
    m = committed(out, "matrix")
    assert m["fingerprint"] == fingerprint(cfg, "matrix", extra)
    rows = storage.read_parquet(storage.join(stage_path(out, "matrix"), "matrix_runs.parquet")).to_pylist()
    assert len(rows) == 6 and {r["arch"] for r in rows} == {"convnet3"}
    assert not run_stage(run, "matrix", extra=extra)  # nothing changed: reused
    # Re-committing the train stage garbage-collects only <run>/train/: the matrix stays.
    run_stage(run, "train", force=True)
    assert committed(out, "matrix") == m and storage.is_file(storage.join(stage_path(out, "matrix"),
                                                                          "matrix.parquet"))


def test_stage_order_error_is_a_user_error(tmp_path, assets):
    cfg = load_config("configs/smoke.yaml", [f"output_dir={tmp_path / 'empty'}", f"assets_root={assets}", *TINY])
    run = Run(cfg)
    run.prepare()
    with pytest.raises(StageOrderError, match="needs a complete encode stage.*ddoq-ray encode"):
        run_stage(run, "quantize")
    assert issubclass(StageOrderError, DdoqError)


def test_cli_prints_user_errors_and_lets_bugs_surface(tmp_path, assets, monkeypatch, capsys):
    from ddoq_ray import cli, pipeline

    args = ["run", "configs/smoke.yaml", "--set", f"output_dir={tmp_path / 'r'}", "--set", f"assets_root={assets}"]

    def user_error(*a, **k):
        raise StageOrderError("stage train needs a complete decode stage for this config")

    monkeypatch.setattr(pipeline, "run_all", user_error)
    assert cli.main(args) == 2
    err = capsys.readouterr().err
    assert err.strip() == "ddoq-ray: error: stage train needs a complete decode stage for this config"

    def bug(*a, **k):
        raise ValueError("a bug, not a user error")

    monkeypatch.setattr(pipeline, "run_all", bug)
    with pytest.raises(ValueError, match="a bug"):
        cli.main(args)
    # A user error raised as the project's error type in a RuntimeError situation (no dashboard for a
    # torch_trainer sweep) is printed, not a traceback.
    monkeypatch.undo()
    bad = ["tune", "configs/smoke.yaml", "--set", f"output_dir={tmp_path / 't'}", "--set", f"assets_root={assets}"]
    assert cli.main(bad) == 2
    assert "config has no `tune:` section" in capsys.readouterr().err


def test_checkpoint_teacher_fine_tuned_on_the_run_split_is_its_own_teacher(assets, tmp_path):
    """``train.teacher_finetune_epochs``: the checkpoint is fine-tuned on the run's real train split, stored as
    the run's teacher (``teacher.pt``, rebuilt in workers from it) and keyed by the fine-tuning fields."""
    from ddoq_ray.artifacts.teacher import worker_spec
    from ddoq_ray.errors import UserValueError
    from ddoq_ray.students.teachers import build_teacher, load_teacher

    ckpt = str(assets / "models/cifar10_resnet_akamaster/resnet20-12fca82f.th")
    base = [f"output_dir={tmp_path / 'run'}", f"assets_root={assets}", "data.class_subset=null",
            "data.max_per_class=8", "data.max_test_per_class=4", f"train.teacher={ckpt}",
            "train.teacher_arch=resnet20_cifar", "metrics.enabled=false"]
    plain = load_config("configs/smoke.yaml", base)
    tuned = load_config("configs/smoke.yaml", [*base, "train.teacher_finetune_epochs=1",
                                               "train.teacher_finetune_lr=0.01"])
    assert fingerprint(plain, "teacher") != fingerprint(tuned, "teacher")
    run = Run(tuned)
    run.prepare()
    _teacher_stage(run)
    d = stage_path(run.dir, "teacher")
    info = storage.read_json(storage.join(d, "teacher.json"))
    assert info["kind"] == "trained" and "fine-tuned by ddoq-ray" in info["source"] and 0 <= info["top1"] <= 1
    rebuilt = build_teacher(worker_spec(d), 10, 32)
    original = load_teacher(ckpt, "resnet20_cifar", 10)
    x = torch.rand(2, 3, 32, 32)
    assert rebuilt(x).shape == (2, 10) and not torch.allclose(rebuilt(x), original(x))
    # A checkpoint read through a class selection (class_subset) has no output per run class to fine-tune.
    sub = load_config("configs/smoke.yaml", [*base, "data.class_subset=[0,3]", "train.teacher_finetune_epochs=1",
                                             f"output_dir={tmp_path / 'run2'}"])
    run = Run(sub)
    run.prepare()
    with pytest.raises(UserValueError, match="teacher_finetune_epochs"):
        _teacher_stage(run)


def _teacher_stage(run) -> None:
    """The teacher stage's body under its commit protocol, without Ray (it needs none)."""
    from ddoq_ray.rundir import stage_writer
    from ddoq_ray.teacher import teacher_stage

    with stage_writer(run.dir, "teacher", fingerprint(run.cfg, "teacher")) as (out, summary):
        teacher_stage(run, out, summary)
