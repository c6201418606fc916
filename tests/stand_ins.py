"""Miniature stand-ins for the data and models a shipped config names (issue 13), for tests only.

- Tiny random-weight diffusers models saved with ``save_pretrained`` and loaded back through the real
  ``from_pretrained`` path: an AutoencoderTiny (TAESD layout), an SD img2img pipeline (f=2 KL VAE, 2-block UNet,
  5-layer CLIP text encoder with a byte-level vocabulary) and a DiT pipeline (f=1 KL VAE, 2-layer transformer with
  ImageNet's 1000 class embeddings + the null class, latent side 16).
- Teacher checkpoints in their library's format: akamaster CIFAR ResNets (``{"state_dict": {"module.<key>": ...}}``,
  random weights) and ``torchvision.models.resnet18(num_classes=n).state_dict()`` (``torch.save``).
- Tiny datasets in a config's own format: HF-style Parquet (``image`` JPEG bytes, ``label`` int8, ``filename``, and
  ``classes.json`` beside it, as in the shared CIFAR-10 copy) and ImageFolder trees with WNID folder names.
- :func:`stand_in_assets`: an assets root laid out so that a shipped config's ``assets:`` refs and hub ids resolve
  to the stand-ins (``ddoq_ray.assets.resolve``: ``org/name`` -> ``<root>/models/<name>``).
"""

from __future__ import annotations

import io
import json
import os
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from PIL import Image

# ------------------------------------------------------------------ diffusers models


def _bytes_to_unicode() -> list[str]:
    """GPT-2/CLIP byte-level alphabet (256 printable stand-ins for the byte values): a vocabulary that can
    tokenise any prompt with no merges."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs, n = bs[:], 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return [chr(c) for c in cs]


def make_taesd(path: Path) -> Path:
    """A random-weight ``AutoencoderTiny`` (TAESD's class) with f=2 and 4 latent channels, saved at ``path``."""
    from diffusers import AutoencoderTiny

    torch.manual_seed(0)
    AutoencoderTiny(encoder_block_out_channels=(8, 8), decoder_block_out_channels=(8, 8), num_encoder_blocks=(1, 1),
                    num_decoder_blocks=(1, 1), latent_channels=4).save_pretrained(path)
    return path


def make_sd(path: Path) -> Path:
    """A tiny random-weight ``StableDiffusionImg2ImgPipeline`` (VAE f=2, DDIM scheduler), saved at ``path``."""
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionImg2ImgPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    torch.manual_seed(0)
    unet = UNet2DConditionModel(block_out_channels=(32, 64), layers_per_block=2, sample_size=32, in_channels=4,
                                out_channels=4, down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
                                up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), cross_attention_dim=32)
    vae = AutoencoderKL(block_out_channels=[32, 64], in_channels=3, out_channels=3,
                        down_block_types=["DownEncoderBlock2D"] * 2, up_block_types=["UpDecoderBlock2D"] * 2,
                        latent_channels=4)
    chars = _bytes_to_unicode()
    vocab = {c: i for i, c in enumerate(chars + [c + "</w>" for c in chars] + ["<|startoftext|>", "<|endoftext|>"])}
    tok = CLIPTokenizer(vocab=vocab, merges=[], model_max_length=77)
    te = CLIPTextModel(CLIPTextConfig(bos_token_id=512, eos_token_id=513, pad_token_id=513, hidden_size=32,
                                      intermediate_size=37, layer_norm_eps=1e-05, num_attention_heads=4,
                                      num_hidden_layers=5, vocab_size=514))
    pipe = StableDiffusionImg2ImgPipeline(vae=vae, text_encoder=te, tokenizer=tok, unet=unet,
                                          scheduler=DDIMScheduler(clip_sample=False, steps_offset=1),
                                          safety_checker=None, feature_extractor=None, image_encoder=None,
                                          requires_safety_checker=False)
    pipe.save_pretrained(path)
    return path


def make_dit(path: Path) -> Path:
    """A tiny random-weight ``DiTPipeline`` (1000 classes like DiT-XL/2, learned sigma: 8 output channels, latent
    side 16, VAE f=1), saved at ``path``."""
    from diffusers import AutoencoderKL, DDIMScheduler, DiTPipeline, DiTTransformer2DModel

    torch.manual_seed(0)
    tr = DiTTransformer2DModel(sample_size=16, num_layers=2, patch_size=4, attention_head_dim=8, num_attention_heads=2,
                               in_channels=4, out_channels=8, attention_bias=True, activation_fn="gelu-approximate",
                               num_embeds_ada_norm=1000, norm_type="ada_norm_zero", norm_elementwise_affine=False)
    sched = DDIMScheduler(clip_sample=False, steps_offset=1)
    DiTPipeline(transformer=tr, vae=AutoencoderKL(), scheduler=sched).save_pretrained(path)
    return path


def build_models(root: Path) -> dict[str, Path]:
    """Every tiny diffusers model once: ``{"taesd", "sd", "dit"}`` -> folder under ``root``."""
    return {"taesd": make_taesd(root / "taesd"), "sd": make_sd(root / "sd"), "dit": make_dit(root / "dit")}


# ------------------------------------------------------------------ teachers


def save_teacher(path: Path, arch: str, num_classes: int) -> Path:
    """A random-weight teacher checkpoint for ``train.teacher_arch`` in its source's format, saved at ``path``.

    ``resnet20_cifar``/``resnet56_cifar``: akamaster's ``{"state_dict": {"module.<key>": tensor}}`` (the
    DataParallel prefix as in the published ``.th`` files). Anything else: the torchvision model of that name,
    ``torchvision.models.get_model(arch, num_classes=num_classes).state_dict()`` (e.g. ImageNet ResNet-18 ``.pth``).
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    if arch.endswith("_cifar"):
        from ddoq_ray.students.models import build_model

        state = {"state_dict": {f"module.{k}": v for k, v in build_model(arch, num_classes, 32).state_dict().items()}}
    else:
        import torchvision

        state = torchvision.models.get_model(arch, num_classes=num_classes).state_dict()
    torch.save(state, path)
    return path


# ------------------------------------------------------------------ data


def _image(rng: np.random.Generator, label: int, side: int = 20) -> Image.Image:
    """A noisy image whose mean colour depends on the label (so classes differ a little)."""
    base = np.array([(label * 70) % 256, (label * 130 + 60) % 256, (label * 200 + 120) % 256], dtype=np.float64)
    px = np.clip(base + rng.normal(0, 40, size=(side, side, 3)), 0, 255).astype(np.uint8)
    return Image.fromarray(px)


def _jpeg(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def write_parquet_split(path: Path, classes: list[str], filled: list[int], per_class: int, seed: int = 0) -> Path:
    """HF-style Parquet like the shared CIFAR-10 copy (``image`` JPEG bytes, ``label`` int8, ``filename``) with
    ``classes.json`` (all of ``classes``) beside it; ``per_class`` images of each label in ``filled``."""
    rng = np.random.default_rng(seed)
    labels = [c for c in filled for _ in range(per_class)]
    images = [_jpeg(_image(rng, c)) for c in labels]
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table({"image": pa.array(images, pa.binary()), "label": pa.array(labels, pa.int8()),
                             "filename": pa.array([f"{path.stem}_{i:05d}.jpg" for i in range(len(labels))])}), path)
    (path.parent / "classes.json").write_text(json.dumps(classes))
    return path


def write_imagefolder(root: Path, folders: list[str], filled: list[str], per_class: int, seed: int = 0) -> Path:
    """ImageFolder ``root/<folder>/<i>.JPEG``: every name in ``folders`` becomes a class folder (so labels are the
    sorted folder order, e.g. all 1000 ImageNet WNIDs); only those in ``filled`` get ``per_class`` images."""
    rng = np.random.default_rng(seed)
    for name in folders:
        (root / name).mkdir(parents=True, exist_ok=True)
    for j, name in enumerate(filled):
        for i in range(per_class):
            _image(rng, j).save(root / name / f"{name}_{i}.JPEG", format="JPEG", quality=90)
    return root


# ------------------------------------------------------------------ an assets root for one shipped config


CIFAR10 = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def _link(dst: Path, src: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    os.symlink(src, dst, target_is_directory=src.is_dir())


def stand_in_assets(doc: dict, root: Path, models: dict[str, Path], per_class: int = 3) -> dict:
    """Lay out ``root`` so that the shipped config ``doc`` (its parsed YAML) finds stand-ins everywhere.

    Hub ids (``encode.vae``, ``decode.model``) become ``root/models/<name>`` links to the tiny models of the
    config's decode mode (the encode VAE is the decode model's own ``vae/``, as in the real checkpoints);
    ``assets:`` refs of data and teacher become files under ``root``; an ImageFolder config gets WNID trees at
    ``root/imagefolder/{train,test}`` (all 1000 WNIDs when the config selects classes by ``data.class_subset``,
    else 3 WNIDs), a Parquet config the CIFAR-10 class list (all 10 with a ``class_subset``, else 3); only the
    classes the run keeps get images. Returns ``{"overrides": [...data locations...], "classes": run class names,
    "all_classes": every class of the split}``.
    """
    from ddoq_ray.classlists import imagenet_classes

    data, enc, dec, train = doc["data"], doc.get("encode", {}), doc.get("decode", {}), doc.get("train", {})
    mode = dec.get("mode", "vae")
    vae_id = enc.get("vae", "madebyollin/taesd")
    if mode == "vae":
        vae_src = models["taesd"] if "taesd" in vae_id.lower() else models["sd"] / "vae"
    else:
        pipe = models["sd" if mode == "sd_img2img" else "dit"]
        _link(root / "models" / dec["model"].split("/")[-1], pipe)
        vae_src = pipe / "vae"
    _link(root / "models" / vae_id.split("/")[-1], vae_src)

    overrides, subset = [], data.get("class_subset")
    fmt = data.get("format", "auto")
    if fmt == "imagefolder":
        wnids = [w for w, _ in imagenet_classes()]
        folders = wnids if subset is not None else [wnids[0], wnids[217], wnids[701]]
        classes = [folders[i] for i in subset] if subset is not None else folders
        for split, n, seed in (("train", per_class, 0), ("test", 2, 1)):
            write_imagefolder(root / "imagefolder" / split, folders, classes, n, seed)
            overrides.append(f"data.{split}={root / 'imagefolder' / split}")
        all_classes = folders
    else:
        all_classes = CIFAR10 if subset is not None else CIFAR10[:3]
        filled = subset if subset is not None else list(range(len(all_classes)))
        classes = [all_classes[i] for i in filled]
        for split, n, seed in (("train", per_class + 2, 0), ("test", 2, 1)):  # + 2: unseen images for tune
            ref = data[split]
            if not ref.startswith("assets:"):
                raise ValueError(f"stand-in for data.{split}={ref!r}: only assets: Parquet refs are built")
            write_parquet_split(root / ref.removeprefix("assets:"), all_classes, filled, n, seed)
    teacher = train.get("teacher")
    if teacher and teacher.startswith("assets:"):
        save_teacher(root / teacher.removeprefix("assets:"), train.get("teacher_arch", "resnet56_cifar"),
                     len(all_classes))
    return {"overrides": overrides, "classes": classes, "all_classes": all_classes}
