"""Bad input never crashes a run or loses data: clear errors, or skipped rows counted with their reason."""

import io
import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import CIFAR_TRAIN, RESNET56
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from make_dirty_data import make, png_bomb
from PIL import Image

from ddoq_ray.assets import AssetNotFoundError, assets_root, resolve
from ddoq_ray.config import ConfigError, RunConfig, load_config
from ddoq_ray.data import DataConfig, DataError, list_split, load_arrays
from ddoq_ray.images import ImageDecodeError, decode_image
from ddoq_ray.quantization import centroid_weights, quantize_class, w2


@pytest.fixture(scope="module")
def dirty(tmp_path_factory):
    root = tmp_path_factory.mktemp("dirty")
    return root, make(root, CIFAR_TRAIN, per_class=4)


def test_dirty_folder_every_file_accounted(dirty):
    root, expect = dirty
    index, classes = list_split(str(root), DataConfig(train=str(root)))
    assert classes == ["airplane", "cat", "ship"]
    assert json.loads(index.schema.metadata[b"ignored_files"]) == expect["ignored"]
    arr = load_arrays(index, "image", 16)
    assert sorted(arr["ids"].tolist()) == expect["ok"]
    assert arr["n_skipped"] == len(expect["skipped"])
    assert index.num_rows == len(expect["ok"]) + len(expect["skipped"])


def test_each_bad_file_has_its_reason(dirty):
    root, expect = dirty
    for rel, reason in expect["skipped"].items():
        with pytest.raises(ImageDecodeError, match=reason):
            decode_image((root / rel).read_bytes(), 16)


def test_exif_orientation_is_applied():
    im = Image.new("RGB", (40, 20), (255, 0, 0))
    im.paste((0, 0, 255), (20, 0, 40, 20))  # left red, right blue
    exif = Image.Exif()
    exif[0x0112] = 6  # display rotated 90° clockwise: left half ends up on top
    buf = io.BytesIO()
    im.save(buf, format="JPEG", exif=exif, quality=95)
    x = decode_image(buf.getvalue(), 20).astype(int)  # 20x40 after rotation, centre-cropped to 20x20
    assert x[2, 10, 0] > 200 > x[2, 10, 2] or x[17, 10, 2] > 200 > x[17, 10, 0]
    assert x.shape == (20, 20, 3)


def test_decompression_bomb_is_refused_cheaply():
    with pytest.raises(ImageDecodeError, match="decompression-bomb"):
        decode_image(png_bomb(), 16)


def test_empty_class_folder_is_an_error(tmp_path):
    make(tmp_path, CIFAR_TRAIN, per_class=1)
    (tmp_path / "dog").mkdir()
    with pytest.raises(DataError, match=r"classes with no images: 'dog' \(label 2\).*class_subset"):
        list_split(str(tmp_path), DataConfig(train=str(tmp_path)))
    index, classes = list_split(str(tmp_path), DataConfig(train=str(tmp_path), class_subset=[0, 1, 3]))
    assert classes == ["airplane", "cat", "ship"]


def test_parquet_null_image_and_label_not_in_classes(tmp_path):
    good = pq.read_table(CIFAR_TRAIN).slice(0, 2)
    p = tmp_path / "train.parquet"
    pq.write_table(pa.table({"image": pa.array([good["image"][0].as_py(), None]), "label": [0, 0]}), p)
    index, _ = list_split(str(p), DataConfig(train=str(p)))
    arr = load_arrays(index, "image", 8)
    assert len(arr["labels"]) == 1 and arr["n_skipped"] == 1
    (tmp_path / "classes.json").write_text('["a", "b"]')
    pq.write_table(pa.table({"image": good["image"], "label": [0, 2]}), p)
    with pytest.raises(DataError, match=r"labels span \[0, 2\] but there are 2 classes"):
        list_split(str(p), DataConfig(train=str(p)))


def test_single_image_class_and_nonfinite_latents():
    q = quantize_class(np.ones((1, 4, 2, 2), np.float32), 1)
    assert q.counts.tolist() == [1] and q.inertia == 0
    z = np.zeros((5, 4), np.float32)
    z[2, 1] = np.nan
    with pytest.raises(ValueError, match="NaN/Inf"):
        quantize_class(z, 2)


def test_encoder_skips_nonfinite_latents(monkeypatch):
    import ddoq_ray.encode as enc

    class Fake(enc.VAEEncoder):
        def __init__(self):
            self.latent, self.seed, self.shape, self.vae = "mean", 0, (4, 2, 2), None

    def fake_encode(vae, images, latent, seeds):
        z = np.ones((len(images), 4, 2, 2), np.float32)
        z[0, 0, 0, 0] = np.inf
        return z

    monkeypatch.setattr(enc, "encode_images", fake_encode)
    t = Fake()({"id": np.array(["a", "b"], dtype=object), "label": np.array([0, 0]),
                "image": np.zeros((2, 16, 16, 3), np.uint8), "ok": np.array([True, True]),
                "error": np.array(["", ""], dtype=object)})
    assert t.column("status").to_pylist() == ["skipped", "ok"]
    assert "non-finite" in t.column("error")[0].as_py()


def test_model_not_available_offline_lists_where_it_looked(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(AssetNotFoundError, match=r"not found offline; looked in: .*models/no-such-vae"):
        resolve("someone/no-such-vae", tmp_path)
    with pytest.raises(AssetNotFoundError, match="is not a directory"):
        assets_root(str(tmp_path / "missing"))
    with pytest.raises(AssetNotFoundError, match="does not exist"):
        resolve("assets:data/none.parquet", tmp_path)


def test_teacher_that_does_not_match_the_classes_is_refused():
    from ddoq_ray.students import load_teacher

    with pytest.raises(ValueError, match="linear"):
        load_teacher(str(RESNET56), "resnet56_cifar", 100)


def test_output_dir_not_writable(tmp_path):
    from ddoq_ray.pipeline import Run

    blocker = tmp_path / "file"
    blocker.write_text("x")
    cfg = load_config("configs/smoke.yaml", [f"output_dir={blocker}/run"])
    with pytest.raises(OSError, match="not writable"):
        Run(cfg).prepare()


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(n=st.integers(1, 40), k=st.integers(1, 8), d=st.integers(1, 6), dup=st.booleans(), const=st.booleans(),
       seed=st.integers(0, 2**16))
def test_fuzz_quantizer_weights_and_w2(n, k, d, dup, const, seed):
    k = min(k, n)
    rng = np.random.default_rng(seed)
    z = rng.normal(size=(n, d)).astype(np.float32)
    if dup:
        z[: n // 2] = z[0]
    if const:
        z[:] = 3.0
    q = quantize_class(z, k, niter=5, seed=seed)
    assert (q.mass >= 0).all() and np.isclose(q.mass.sum(), 1.0) and q.counts.sum() == n
    for scheme in ("uniform", "mass", "sqrt_mass"):
        w = centroid_weights(q.mass, scheme)
        assert (w >= 0).all() and np.isclose(w.sum(), 1.0)
    m, u = w2(z, q.centroids, q.mass), w2(z, q.centroids, centroid_weights(q.mass, "uniform"))
    assert m <= u + 1e-6 * max(1.0, u)
    assert m == pytest.approx(np.sqrt(q.inertia / n), rel=1e-4, abs=1e-6)


_section = st.dictionaries(st.sampled_from(["ipc", "niter", "seed", "bogus", "epochs", "strength", "mode"]),
                           st.one_of(st.integers(-5, 5), st.floats(-1, 2), st.text(max_size=3), st.none()),
                           max_size=3)


@settings(max_examples=60, deadline=None)
@given(quantize=_section, decode=_section, train=_section)
def test_fuzz_configs_fail_only_with_config_errors(tmp_path_factory, quantize, decode, train):
    import yaml

    p = tmp_path_factory.mktemp("cfg") / "c.yaml"
    p.write_text(yaml.safe_dump({"data": {"train": "x.parquet"}, "quantize": quantize, "decode": decode,
                                 "train": train}))
    try:
        cfg = load_config(p)
    except ConfigError as e:
        assert str(p) in str(e)
    else:
        assert isinstance(cfg, RunConfig) and cfg.quantize.ipc > 0 and 0 <= cfg.decode.strength <= 1


def test_dirty_folder_end_to_end_lists_skipped_files(ray_session, dirty, tmp_path):
    from ddoq_ray.pipeline import run_all

    root, expect = dirty
    cfg = load_config("configs/smoke.yaml", [f"data.train={root}", "data.test=null", "data.class_subset=null",
                                             "data.max_per_class=null", "quantize.ipc=3", f"output_dir={tmp_path}"])
    res = run_all(cfg, stages=("encode", "quantize", "decode"))
    enc = res["stages"]["encode"]
    assert enc["input"] == len(expect["ok"]) + len(expect["skipped"]) and enc["encoded"] == len(expect["ok"])
    reasons = {r["id"]: r["error"] for r in enc["skipped_rows"]}
    assert set(reasons) == set(expect["skipped"])
    for rel, fragment in expect["skipped"].items():
        assert fragment in reasons[rel]
    assert res["ignored_files"] == expect["ignored"]
    saved = json.loads((tmp_path / "results.json").read_text())
    assert {r["id"] for r in saved["stages"]["encode"]["skipped_rows"]} == set(expect["skipped"])
    from ddoq_ray.rundir import stage_path

    assert pq.read_table(f"{stage_path(str(tmp_path), 'encode')}/skipped.parquet").num_rows == len(expect["skipped"])
    assert res["stages"]["decode"]["images"] == 9


def test_class_smaller_than_ipc_fails_before_encoding(tmp_path, dirty):
    from ddoq_ray.pipeline import Run

    root, _ = dirty
    cfg = load_config("configs/smoke.yaml", [f"data.train={root}", "data.class_subset=null", "data.max_per_class=null",
                                             "quantize.ipc=10", f"output_dir={tmp_path}"])
    with pytest.raises(ValueError, match=r"fewer images than quantize.ipc=10: 'airplane' \(4\)"):
        Run(cfg).prepare()
    assert not (tmp_path / "encode").exists()
