"""Methods as presets of (clustering, weights, images) through the stages (issue 14): minibatch centroids are
scikit-learn's, nearest_real ships the input images themselves from their own cells, herding / k_center are
chosen by the subsets stage, the results table names each method's parts, and protocol presets resolve to their
documented values. One tiny run (2 classes x 24 images, IPC 3) with no students."""

import numpy as np
import pytest

from ddoq_ray.artifacts.centroids import read_assignments, read_centroids, read_class_table
from ddoq_ray.artifacts.latents import read_class_latents
from ddoq_ray.artifacts.method_presets import METHODS, decoded_algorithms, needed_algorithms, subsets_methods
from ddoq_ray.artifacts.subsets import read_selection, read_w2
from ddoq_ray.config import load_config
from ddoq_ray.pipeline import Run, run_stage
from ddoq_ray.quantization import quantize_class
from ddoq_ray.rundir import stage_path

TINY = ["data.class_subset=[0,3]", "data.max_per_class=24", "data.max_test_per_class=20", "quantize.ipc=3",
        "quantize.algorithms=[lloyd]", "metrics.enabled=false",
        "train.methods=[random,herding,k_center,d4m,ddoq,lloyd_mass,ddoq_nearest,lloyd_nearest]"]


@pytest.fixture(scope="module")
def tiny(ray_session, assets, tmp_path_factory):
    out = tmp_path_factory.mktemp("methods") / "run"
    cfg = load_config("configs/smoke.yaml", [f"output_dir={out}", f"assets_root={assets}", *TINY])
    run = Run(cfg)
    run.prepare()
    for name in ("encode", "quantize", "subsets", "decode"):
        run_stage(run, name)
    return cfg, run, str(out)


def test_config_resolves_which_stage_makes_what(tiny):
    cfg, _, _ = tiny
    assert needed_algorithms(cfg) == ["lloyd", "minibatch"]
    assert decoded_algorithms(cfg) == ["minibatch", "lloyd"]
    assert subsets_methods(cfg) == ["herding", "k_center", "ddoq_nearest", "lloyd_nearest"]


def test_minibatch_stage_centroids_are_scikit_learns(tiny):
    from sklearn.cluster import MiniBatchKMeans

    cfg, _, out = tiny
    q = stage_path(out, "quantize")
    for label in (0, 1):
        _, z = read_class_latents(stage_path(out, "encode"), label)
        x = z.reshape(len(z), -1)
        km = MiniBatchKMeans(n_clusters=3, random_state=cfg.quantize.seed, batch_size=3, n_init="auto")
        for s in range(0, len(x) - 2, 3):  # D4M: consecutive mini-batches of km_expand*K latents, stored order
            km.partial_fit(x[s:s + 3])
        t = read_centroids(q, "minibatch")
        t = t.filter(np.array(t.column("label").to_pylist()) == label)
        got = t.column("centroid").combine_chunks().to_numpy_ndarray().reshape(3, -1)
        assert np.array_equal(got, km.cluster_centers_.astype(np.float32))
        # lloyd is the pre-issue-14 call, bit for bit
        t = read_centroids(q, "lloyd")
        t = t.filter(np.array(t.column("label").to_pylist()) == label)
        ref = quantize_class(z, 3, cfg.quantize.niter, cfg.quantize.nredo, cfg.quantize.seed + label, 1)
        assert np.array_equal(t.column("centroid").combine_chunks().to_numpy_ndarray(), ref.centroids)
    assert {r["algorithm"] for r in read_class_table(q)} == {"lloyd", "minibatch"}


def test_nearest_real_ships_input_images_from_their_own_cells(tiny):
    from ddoq_ray.artifacts.methods import method_set
    from ddoq_ray.data import load_arrays

    cfg, run, out = tiny
    for method, algo in (("ddoq_nearest", "minibatch"), ("lloyd_nearest", "lloyd")):
        ids, w = read_selection(stage_path(out, "subsets"), method)
        asg = {r["id"]: r for r in read_assignments(stage_path(out, "quantize"), algorithm=algo).to_pylist()}
        cent = read_centroids(stage_path(out, "quantize"), algo).to_pylist()
        mass = {(r["label"], r["k"]): r["mass"] for r in cent}
        cells = [(asg[i]["label"], asg[i]["k"]) for i in ids]
        assert len(set(cells)) == len(ids) == sum(m > 0 for m in mass.values())  # one image per non-empty cell
        assert np.allclose(w, [mass[c] for c in cells])  # each keeps its cell's mass
        # the nearest latent of its cell (same cell, smallest distance)
        for i, c in zip(ids, cells, strict=True):
            assert asg[i]["sqdist"] == min(r["sqdist"] for r in asg.values() if (r["label"], r["k"]) == c)
        s = method_set(method, 0, cfg.train, run_dir=out, train_index=run.train_index, image_column="image",
                       ipc=3, syn={})
        idx = run.train_index
        ref = load_arrays(idx.filter(np.isin(np.array(idx.column("id").to_pylist()), ids)), "image", 32)
        assert np.array_equal(s["images"], ref["images"]) and np.array_equal(s["labels"], ref["labels"])
        assert len(s["labels"]) == len(ids)


def test_herding_and_k_center_ids_are_in_the_subsets_artifact(tiny):
    from ddoq_ray.selection import herding, k_center, select

    _, _, out = tiny
    sub = stage_path(out, "subsets")
    w2 = {(r["method"], r["label"]): r["w2"] for r in read_w2(sub)}
    for method, pick in (("herding", herding), ("k_center", k_center)):
        ids, w = read_selection(sub, method)
        want = []
        for label in (0, 1):
            cls_ids, z = read_class_latents(stage_path(out, "encode"), label)
            idx = pick(z, 3)
            want += [cls_ids[i] for i in idx]
            assert w2[(method, label)] == pytest.approx(select(z, idx).w2, rel=1e-12)
        assert ids == want and np.allclose(w, 1 / 3)


def test_results_table_names_each_methods_parts(tiny):
    from ddoq_ray.results import results_table, w2_table, write_results

    cfg, run, out = tiny
    res = write_results(run)
    table = results_table(res)
    assert table.splitlines()[0] == ("| method | clustering | weights | images | IPC | mean latent W2 | top-1 (%) | "
                                     "vs random (points) |")
    rows = {ln.split("|")[1].strip(): [c.strip() for c in ln.split("|")[2:5]] for ln in table.splitlines()[2:]}
    for m in cfg.train.methods:
        p = METHODS[m]
        assert rows[m] == [p.clustering, "mass" if p.weights == "mass" else "uniform", p.images]
    dec = res["w2_decomposition"]
    mb = dec["clusterings"]["minibatch"]
    assert set(mb["mean"]) == {"uniform", "mass", "sqrt_mass"} and mb["mean"]["mass"] <= mb["mean"]["uniform"]
    assert res["method_parts"]["ddoq"]["w2"] == mb["mean"]["mass"]
    assert res["method_parts"]["herding"]["w2"] == dec["shipped"]["herding"]["mean"]
    assert "| minibatch |" in w2_table(res) and "ddoq_nearest (real latents shipped)" in w2_table(res)
    assert res["protocol"]["reported"] == "final epoch"


def test_main_job_config_is_the_best_measured_method_with_the_papers():
    cfg = load_config("configs/cifar10_taesd_ipc10.yaml")
    assert needed_algorithms(cfg) == ["lloyd", "minibatch"] and decoded_algorithms(cfg) == ["minibatch"]
    assert subsets_methods(cfg) == ["lloyd_nearest"]
    assert [(METHODS[m].clustering, METHODS[m].weights, METHODS[m].images) for m in cfg.train.methods] == [
        ("random", "uniform", "real"), ("minibatch", "mass", "decoded"), ("lloyd", "mass", "nearest_real")]
    assert cfg.quantize.init == "random" and cfg.quantize.n_init == 1
    paper = load_config("configs/smoke.yaml")
    assert [METHODS[m].clustering for m in ("d4m", "ddoq")] == ["minibatch"] * 2
    assert needed_algorithms(paper) == ["minibatch"]


def test_protocol_presets_resolve_to_their_documented_values():
    base = ["data.class_subset=[0,3,8]", "quantize.ipc=10"]
    t = load_config("configs/cifar10_taesd_ipc10.yaml", ["train.protocol=sre2l", *base]).train
    # explicit fields in the YAML win: the main config writes epochs 300, batch 50, label_mode hard, seeds [0,1,2]
    assert (t.epochs, t.batch_size, t.label_mode, t.seeds) == (300, 50, "hard", [0, 1, 2])
    assert (t.temperature, t.min_crop_scale, t.weight_decay) == (4.0, 0.08, 0.01)
    from ddoq_ray.students.protocols import apply_protocol

    doc = {"data": {"train": "x", "class_subset": [0, 3, 8]}, "quantize": {"ipc": 10}, "train": {"protocol": "sre2l"}}
    tr = apply_protocol(doc)["train"]
    assert tr == {"protocol": "sre2l", "label_mode": "precomputed", "epochs": 300, "batch_size": 30,
                  "temperature": 20.0, "mix": "cutmix", "cutmix_prob": 1.0, "cutmix_beta": 1.0, "min_crop_scale": 0.08,
                  "weight_decay": 0.01, "seeds": [0, 1, 2], "lr": 1e-3, "optimizer": "adamw", "schedule": "cosine",
                  "reported": "final"}
    doc["train"] = {"protocol": "dd_ranking", "epochs": 7}
    tr = apply_protocol(doc)["train"]
    assert (tr["epochs"], tr["batch_size"], tr["seeds"], tr["temperature"]) == (7, 30, [0, 1, 42, 1234, 3407], 20.0)
    doc["train"] = {"protocol": "ddoq_hard"}
    doc["data"] = {"train": "x"}  # no class list: the 10-class rule
    tr = apply_protocol(doc)["train"]
    assert (tr["label_mode"], tr["epochs"], tr["batch_size"], tr["lr"], tr["cutmix_prob"]) == ("hard", 300, 50,
                                                                                              1e-3, 0.5)
    for name in ("rded", "hard"):  # SGD / step / half-cosine / best-of-epochs: run as documented since issue 14
        t = load_config("configs/smoke.yaml", [f"train.protocol={name}"]).train
        assert (t.optimizer, t.schedule) == {"rded": ("adamw", "half_cosine"), "hard": ("sgd", "step")}[name]
