"""VAE core with the real pretrained TAESD, and the latent Parquet schema read back by plain pyarrow."""

import subprocess
import sys

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import CIFAR_TRAIN, TAESD

from ddoq_ray.artifacts.latents import LatentMismatchError, check_meta, to_tensor_array
from ddoq_ray.config import DataConfig
from ddoq_ray.data import list_split, load_arrays
from ddoq_ray.encode import VAEEncoder
from ddoq_ray.vae import decode_latents, encode_images, latent_shape, load_vae


@pytest.fixture(scope="module")
def cifar64():
    dcfg = DataConfig(train=str(CIFAR_TRAIN), max_per_class=4)
    index, _ = list_split(str(CIFAR_TRAIN), dcfg, 4)
    return load_arrays(index, "image", 64)


def test_taesd_round_trip_shapes_and_quality(cifar64):
    vae = load_vae(str(TAESD), precision="fp32")
    assert vae.kind == "tiny" and vae.scaling_factor == 1.0
    z = encode_images(vae, cifar64["images"])
    assert z.shape == (40, 4, 8, 8) and z.dtype == np.float32
    assert 0.3 < z.std() < 2.0  # SD-scaled latent space (unit-ish variance)
    x = decode_latents(vae, z)
    assert x.shape == (40, 64, 64, 3) and x.dtype == np.uint8
    mse = ((x.astype(float) - cifar64["images"].astype(float)) ** 2).mean()
    psnr = 10 * np.log10(255**2 / mse)
    assert psnr > 18  # measured ~21 dB for CIFAR at 64 px (TAESD README: 24.5 dB at 64 px on other images)


def test_bf16_autocast_close_to_fp32(cifar64):
    z32 = encode_images(load_vae(str(TAESD), precision="fp32"), cifar64["images"][:8])
    z16 = encode_images(load_vae(str(TAESD), precision="bf16"), cifar64["images"][:8])
    assert np.abs(z32 - z16).mean() < 0.05 * np.abs(z32).mean()


def test_latent_shape_from_config_only():
    assert latent_shape(str(TAESD), "auto", 64) == (4, 8, 8)
    assert latent_shape(str(TAESD), "auto", 256) == (4, 32, 32)
    with pytest.raises(ValueError, match="multiple of"):
        latent_shape(str(TAESD), "auto", 60)


def test_encoder_marks_undecodable_rows_skipped(cifar64):
    enc = VAEEncoder(str(TAESD), "auto", "fp32", "mean", 0, (4, 8, 8), "cpu", 1)
    batch = {"id": np.array(["a", "b"], dtype=object), "label": np.array([0, 1]),
             "image": cifar64["images"][:2], "ok": np.array([True, False]),
             "error": np.array(["", "cannot decode image"], dtype=object)}
    t = enc(batch)
    assert t.column("status").to_pylist() == ["ok", "skipped"]
    assert t.column("error").to_pylist()[1] == "cannot decode image"
    assert t.column("latent").type.shape == [4, 8, 8]


def test_several_batches_per_task_encode_each_row_as_one_batch_does(cifar64):
    """encode.batches_per_task: a task of 7 rows run 3 at a time (skipped rows left out) gives the latents of the
    whole task in one VAE call, row for row."""
    n = 7
    batch = {"id": np.array([f"r{i}" for i in range(n)], dtype=object), "label": np.zeros(n, dtype=np.int64),
             "image": cifar64["images"][:n], "ok": np.array([True, True, False, True, True, True, True]),
             "error": np.array([""] * n, dtype=object)}
    whole = VAEEncoder(str(TAESD), "auto", "fp32", "mean", 0, (4, 8, 8), "cpu", 1)(batch)
    micro = VAEEncoder(str(TAESD), "auto", "fp32", "mean", 0, (4, 8, 8), "cpu", 1, micro_batch=3)(batch)
    za, zb = (t.column("latent").combine_chunks().to_numpy_ndarray() for t in (whole, micro))
    assert micro.column("status").to_pylist() == whole.column("status").to_pylist()
    assert za.shape == zb.shape == (n, 4, 8, 8) and np.abs(za[2]).max() == 0  # the skipped row stays zero
    np.testing.assert_allclose(zb, za, rtol=1e-5, atol=1e-6)


def test_latent_parquet_keeps_shape_in_plain_pyarrow(tmp_path):
    z = np.random.default_rng(0).normal(size=(3, 4, 8, 8)).astype(np.float32)
    pq.write_table(pa.table({"id": ["a", "b", "c"], "latent": to_tensor_array(z)}), tmp_path / "l.parquet")
    # A fresh interpreter without Ray: the shape must come from the file alone.
    code = ("import pyarrow.parquet as pq, numpy as np; t = pq.read_table(r'%s');"
            "a = t.column('latent').combine_chunks().to_numpy_ndarray(); print(a.shape, float(a.sum()))"
            % (tmp_path / "l.parquet"))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.startswith("(3, 4, 8, 8)") and float(out.split(")")[-1]) == pytest.approx(float(z.sum()), rel=1e-5)


def test_latents_from_another_vae_are_refused():
    meta = {"vae": "madebyollin/taesd", "latent_shape": [4, 8, 8]}
    check_meta(meta, "madebyollin/taesd", (4, 8, 8))
    with pytest.raises(LatentMismatchError, match="re-run the encode stage"):
        check_meta(meta, "stabilityai/sd-vae-ft-mse", (4, 8, 8))
    with pytest.raises(LatentMismatchError, match=r"\(4, 32, 32\)"):
        check_meta(meta, "madebyollin/taesd", (4, 32, 32))
