"""Decode modes (vae, sd_img2img, dit) with tiny random-weight diffusers models (stack.md §5.5 configs), saved with
``save_pretrained`` and loaded through the real ``from_pretrained`` path; class lists; ``ddoq-ray validate``."""

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
import yaml
from conftest import REPO
from stand_ins import make_dit, make_sd

from ddoq_ray.artifacts.latents import to_tensor_array
from ddoq_ray.artifacts.synthetic import load_synthetic
from ddoq_ray.classlists import SUBSETS, imagenet_classes, imagenet_index, imagenet_names, subset_wnids
from ddoq_ray.config import ConfigError, RunConfig
from ddoq_ray.decode import class_id_map, prompt_names, run_decode, validate_decode
from ddoq_ray.diffusion import DiffusionSettings, guide, image_seed, img2img_timesteps, load_decoder
from ddoq_ray.vae import decode_latents, load_vae

IMAGENET_CONFIGS = ["imagenet1k_sd_ipc10", "imagenet1k_dit_ipc10", "imagenette_dit_ipc10", "imagewoof_dit_ipc10"]


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    return {"sd": str(make_sd(root / "sd")), "dit": str(make_dit(root / "dit"))}


# SD tiny VAE is f=2 (8x8 latents -> 16 px); the DiT takes 16x16 latents (sample_size 16) with an f=1 VAE.
SHAPES = {"sd_img2img": (4, 8, 8), "dit": (4, 16, 16)}
FAST = {"num_inference_steps": 4, "scheduler": "DDIMScheduler"}


def _decoder(models, mode, strength=0.5, **kw):
    s = DiffusionSettings(mode=mode, strength=strength, guidance_scale=kw.pop("guidance_scale", 4.0), **FAST)
    path = models["sd" if mode == "sd_img2img" else "dit"]
    return load_decoder(s, path, class_names=["tench", "golf ball"], **kw)


def _latents(mode, n=3, seed=0):
    return np.random.default_rng(seed).normal(size=(n, *SHAPES[mode])).astype(np.float32)


@pytest.mark.parametrize("mode", ["sd_img2img", "dit"])
def test_shapes_and_determinism(models, mode):
    dec = _decoder(models, mode)
    z = _latents(mode)
    a = dec.decode(z, [0, 1, 0], [1, 2, 3])
    side = 16
    assert a.shape == (3, side, side, 3) and a.dtype == np.uint8
    np.testing.assert_array_equal(a, dec.decode(z, [0, 1, 0], [1, 2, 3]))  # same seeds -> same pixels
    b = dec.decode(z, [0, 1, 0], [1, 2, 99])
    np.testing.assert_array_equal(a[:2], b[:2])  # per-image seeds: other rows untouched
    assert (a[2] != b[2]).any()  # another seed -> another image


@pytest.mark.parametrize("mode", ["sd_img2img", "dit"])
def test_strength_zero_is_plain_vae_decode(models, mode):
    z = _latents(mode)
    got = _decoder(models, mode, strength=0.0).decode(z, [0, 1, 0], [1, 2, 3])
    ref = decode_latents(load_vae(models["sd" if mode == "sd_img2img" else "dit"], precision="fp32"), z)
    assert np.abs(got.astype(int) - ref.astype(int)).max() <= 1
    moved = _decoder(models, mode, strength=0.5).decode(z, [0, 1, 0], [1, 2, 3])
    assert np.abs(moved.astype(int) - ref.astype(int)).max() > 1


def test_dit_class_ids_out_of_range_refused(models):
    with pytest.raises(ValueError, match="outside the model's 1000 classes"):
        _decoder(models, "dit", model_labels=[0, 1000])


def test_image_seed_is_stable_and_distinct():
    assert image_seed(0, 1, 2, 0) == image_seed(0, 1, 2, 0)
    assert len({image_seed(s, c, k, r) for s in (0, 1) for c in range(3) for k in range(3) for r in range(2)}) == 36
    assert 0 <= image_seed(7, 999, 49, 3) < 2**63


def test_class_id_map(tmp_path):
    assert class_id_map(None, ["n01440764", "n03888257"]) == [0, 701]  # WNIDs -> ImageNet index
    assert class_id_map(None, ["cat", "dog"]) is None  # identity
    assert class_id_map([5, 7], ["a", "b"]) == [5, 7]
    (tmp_path / "m.json").write_text(json.dumps({"b": 3, "0": 9}))
    assert class_id_map(str(tmp_path / "m.json"), ["a", "b"]) == [9, 3]
    with pytest.raises(ValueError, match="1 ids for 2 classes"):
        class_id_map([5], ["a", "b"])


def test_class_subset_with_plain_names_maps_to_the_original_model_ids():
    # Imagenette-style subset of an ImageNet Parquet whose names are not WNIDs: run label c is model id subset[c].
    assert class_id_map(None, ["tench", "English springer"], [0, 217]) == [0, 217]
    assert class_id_map(None, ["n01440764", "n02102040"], [5, 6]) == [0, 217]  # WNIDs: by name, not by position
    assert class_id_map(None, ["cat", "dog"]) is None and class_id_map([9, 3], ["a", "b"], [0, 1]) == [9, 3]
    cfg = RunConfig.model_validate({"data": {"train": "unused", "class_subset": [0, 217]},
                                    "encode": {"vae": "m"}, "decode": {"mode": "dit", "model": "m"}})
    notes = validate_decode(cfg, None, None, ["tench", "English springer"])
    assert "decode: model class ids [0, 217]" in notes


def test_numeric_class_names_are_refused_as_sd_prompts(tmp_path):
    doc = {"data": {"train": "unused"}, "encode": {"vae": "m"}, "decode": {"mode": "sd_img2img", "model": "m"}}
    cfg = RunConfig.model_validate(doc)
    with pytest.raises(ConfigError, match=r"bare label numbers \('0', '1'\).*set data.classes"):
        validate_decode(cfg, None, None, ["0", "1"])
    with pytest.raises(ConfigError, match="decode.allow_numeric_prompts=true"):  # before any model or Ray work
        run_decode(cfg, _centroids((4, 8, 8)), ["0", "1"], "m", str(tmp_path), {})
    assert validate_decode(cfg, None, None, ["cat", "dog"])  # real names pass
    doc["decode"]["allow_numeric_prompts"] = True
    assert validate_decode(RunConfig.model_validate(doc), None, None, ["0", "1"])


def test_the_two_crane_prompts_differ():
    assert prompt_names(["n02012849", "n03126707"]) == ["crane (bird)", "crane (machine)"]
    assert len(set(imagenet_names().values())) == 1000  # every ImageNet-1K prompt name is distinct
    assert dict(imagenet_classes())["n02012849"] == "crane"  # the shipped list stays the verbatim WordNet copy


def test_heun_kept_timesteps_equal_diffusers_img2img(models):
    from types import SimpleNamespace

    from diffusers import DDIMScheduler, HeunDiscreteScheduler, StableDiffusionImg2ImgPipeline

    s = DiffusionSettings(mode="dit", strength=0.7, guidance_scale=4.0, num_inference_steps=10,
                          scheduler="HeunDiscreteScheduler")
    dec = load_decoder(s, models["dit"])
    seen, forward = [], dec.transformer.forward

    def spy(x, timestep, class_labels):
        seen.append(float(timestep[0]))
        return forward(x, timestep=timestep, class_labels=class_labels)

    dec.transformer.forward = spy
    dec.decode(_latents("dit", n=1), [0], [1])
    ref = HeunDiscreteScheduler.from_config(dec.scheduler.config)
    ref.set_timesteps(10)
    want, n_steps = StableDiffusionImg2ImgPipeline.get_timesteps(SimpleNamespace(scheduler=ref), 10, 0.7, "cpu")
    assert n_steps == 7 and len(want) == 13  # Heun: 2 evaluations per step, one for the last
    assert isinstance(dec.scheduler, HeunDiscreteScheduler)
    assert seen == want.tolist() and dec.scheduler.begin_index == ref.begin_index == 6
    d = DDIMScheduler(clip_sample=False, steps_offset=1)  # first-order: today's plain slice, results unchanged
    d.set_timesteps(50)
    assert img2img_timesteps(d, 50, 0.7).tolist() == d.timesteps[15:].tolist()


def test_first3_guidance_changes_only_the_guided_channels(models):
    g = torch.Generator().manual_seed(0)
    cond, uncond = torch.randn(2, 4, 3, 3, generator=g), torch.randn(2, 4, 3, 3, generator=g)
    full = guide(cond, uncond, 4.0)
    torch.testing.assert_close(full, uncond + 4.0 * (cond - uncond), rtol=0, atol=0)
    first3 = guide(cond, uncond, 4.0, "first3")
    assert torch.equal(first3[:, :3], full[:, :3]) and torch.equal(first3[:, 3:], cond[:, 3:])
    with pytest.raises(ValueError, match="guidance_channels"):
        guide(cond, uncond, 4.0, "first2")
    z = _latents("dit", n=1)
    out = {ch: load_decoder(DiffusionSettings(mode="dit", strength=0.5, guidance_scale=4.0, guidance_channels=ch,
                                              **FAST), models["dit"]).decode(z, [0], [1]) for ch in ("all", "first3")}
    assert (out["all"] != out["first3"]).any()
    with pytest.raises(ValueError, match="applies to mode dit only"):
        RunConfig.model_validate({"data": {"train": "x"}, "decode": {"mode": "sd_img2img", "model": "m",
                                                                     "guidance_channels": "first3"}})


def test_classlists():
    classes = imagenet_classes()
    wnids = [w for w, _ in classes]
    assert len(wnids) == 1000 == len(set(wnids)) and wnids == sorted(wnids)  # label order = sorted WNIDs
    assert classes[0] == ("n01440764", "tench, Tinca tinca") and classes[999][0] == "n15075141"
    index = imagenet_index()
    expected = {"imagenette": [0, 217, 482, 491, 497, 566, 569, 571, 574, 701],
                "imagewoof": [155, 159, 162, 167, 182, 193, 207, 229, 258, 273]}
    for name in SUBSETS:
        wn = subset_wnids(name)
        assert len(wn) == 10 == len(set(wn)) and all(w in index for w in wn)
        assert [index[w] for w in wn] == expected[name]
        cfg = yaml.safe_load((REPO / "configs" / f"{name}_dit_ipc10.yaml").read_text())
        assert cfg["data"]["class_subset"] == expected[name]  # the config selects exactly these WNIDs


def _centroids(shape, classes=2, k=2):
    rng = np.random.default_rng(0)
    n = classes * k
    mass = np.tile(np.array([0.75, 0.25])[:k], classes)
    return pa.table({"label": pa.array(np.repeat(np.arange(classes), k), pa.int64()),
                     "k": pa.array(np.tile(np.arange(k), classes), pa.int32()),
                     "centroid": to_tensor_array(rng.normal(size=(n, *shape)).astype(np.float32)),
                     "count": pa.array((mass * 100).astype(np.int64)), "mass": pa.array(mass)})


def test_run_decode_all_modes_through_ray(ray_session, models, tmp_path):
    classes = ["n01440764", "golf ball"]
    cases = {"vae": (models["sd"], {}, SHAPES["sd_img2img"], 8),
             "sd_img2img": (models["sd"], {"model": models["sd"]}, SHAPES["sd_img2img"], 8),
             "dit": (models["dit"], {"model": models["dit"], "guidance_scale": 4.0}, SHAPES["dit"], 16)}
    for mode, (vae, extra, shape, size) in cases.items():
        cfg = RunConfig.model_validate({
            "data": {"train": "unused", "image_size": size}, "encode": {"vae": vae, "precision": "fp32"},
            "decode": {"mode": mode, "images_per_centroid": 2, "batch_size": 4, "output_size": 24, **FAST, **extra}})
        out = tmp_path / mode
        out.mkdir()
        summary = {}
        run_decode(cfg, _centroids(shape), classes, vae, out, summary)
        m = pq.read_table(out / "manifest.parquet").to_pylist()
        assert summary["images"] == len(m) == 8 and {r["copy"] for r in m} == {0, 1}
        assert all(r["mode"] == mode and r["weight_mass"] == pytest.approx(r["mass"] / 2) for r in m)
        assert len({r["seed"] for r in m}) == 8 and m[0]["path"] == "n01440764/0_0_0.png"
        assert m[0]["steps"] == (4 if mode != "vae" else 0) and m[0]["denoise_steps"] == (2 if mode != "vae" else 0)
        syn = load_synthetic(out, 24)
        assert syn["images"].shape == (8, 24, 24, 3)
        assert syn["mass"].sum() == pytest.approx(2.0)  # per class: masses sum to 1 over all copies
        assert (out / "grid.png").is_file()
        if mode != "vae":  # the two copies of a centroid got different noise
            a, b = (load_synthetic(out, 24)["images"][i] for i in (0, 1))
            assert (a != b).any()


def test_validate_accepts_imagenet_configs(capsys):
    from ddoq_ray.cli import main

    for name in IMAGENET_CONFIGS:
        assert main(["validate", str(REPO / "configs" / f"{name}.yaml")]) == 0, name
        out = capsys.readouterr().out
        assert "valid" in out and ("4x64x64" in out if "sd" in name else "4x32x32" in out)


def test_validate_refuses_mismatched_vae_and_shape(capsys):
    from ddoq_ray.cli import main

    cfg = str(REPO / "configs" / "imagenet1k_dit_ipc10.yaml")
    assert main(["validate", cfg, "--set", "encode.vae=madebyollin/taesd"]) == 2
    err = capsys.readouterr().err
    assert "latent space of 'facebook/DiT-XL-2-256'" in err and "encode.vae='madebyollin/taesd'" in err
    assert main(["validate", cfg, "--set", "data.image_size=512"]) == 2
    assert "takes 32x32 latents" in capsys.readouterr().err
    assert main(["validate", cfg, "--set", "decode.strength=1.5"]) == 2
    assert "strength must be in [0, 1]" in capsys.readouterr().err


