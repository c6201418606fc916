"""The ``dd_ranking`` preset checked against DD-Ranking's own evaluator on the same images (issue 14).

DD-Ranking (``ddranking`` 0.2.0, NUS-HPC-AI-Lab/DD-Ranking) pins numpy < 2, which pyarrow (and so ddoq-ray)
cannot import, so the check runs in two environments and three steps:

1. ``prepare RUN OUT`` (the project's venv): from a run whose train stage used ``train.protocol: dd_ranking``,
   writes what DD-Ranking reads: the run's train and test splits as torchvision's ``cifar-10-batches-py`` (the same
   decoded pixels the students see), each method's training set of each seed as an ImageFolder of lossless PNGs
   (``sets/<method>_s<seed>/<label>_<class>/``), the run's teacher as TorchScript (input: float NCHW in [0, 1]),
   and the preset's resolved hyperparameters (``protocol.json``).
2. ``evaluate OUT`` (a venv with ``ddranking``, numpy < 2 and torch): builds DD-Ranking's ``LabelRobustScoreSoft``
   with those hyperparameters and the ImageFolder transforms of its D4M CIFAR-10 setting (RandomResizedCrop,
   flip, its CIFAR mean/std), gives it the run's teacher (DD-Ranking normalises inputs with CIFAR statistics;
   a wrapper undoes that before the teacher), and trains one student per set with DD-Ranking's own
   ``_compute_soft_label_metrics`` (its ConvNet-3, Cutmix, KL loss, optimizer, scheduler, test loop and best-of
   every 20 epochs) at the preset's lr, i.e. one run of its evaluator without the lr search. ``torchvision``'s
   download check is bypassed (no internet; the files are the run's own). Writes ``OUT/ddranking.json``.
3. ``compare RUN OUT`` (the project's venv): both top-1 per set, written to
   ``benchmarks/results/ddranking_check.json`` and printed.

    .venv/bin/python -m benchmarks.ddranking_check prepare runs/ddr_check /tmp/ddr_check --methods random --seeds 0
    /path/to/ddr-venv/bin/python -m benchmarks.ddranking_check evaluate /tmp/ddr_check
    .venv/bin/python -m benchmarks.ddranking_check compare runs/ddr_check /tmp/ddr_check

Only the standard library is imported at module level, so step 2 needs none of ddoq-ray's dependencies.
"""

from __future__ import annotations

import argparse
import json
import pickle
import time
from pathlib import Path

CIFAR_MEAN = (0.4914, 0.4822, 0.4465)  # DD-Ranking's get_dataset('CIFAR10') normalisation
CIFAR_STD = (0.2023, 0.1994, 0.2010)
PROTOCOL_FIELDS = ("epochs", "lr", "weight_decay", "temperature", "batch_size", "min_crop_scale", "mix",
                   "cutmix_prob", "cutmix_beta", "schedule", "optimizer", "eval_every", "reported", "label_mode",
                   "image_size")


def _cifar_batch(images, labels, path: Path, name: str) -> None:
    """One torchvision CIFAR pickle: ``data`` uint8 [n, 3072] (R, G, B planes), ``labels`` list of int."""
    import numpy as np

    data = np.ascontiguousarray(images.transpose(0, 3, 1, 2).reshape(len(images), -1))
    with open(path, "wb") as f:
        pickle.dump({"batch_label": name, "data": data, "labels": [int(c) for c in labels]}, f)


def prepare(run_dir: str, out: Path, methods: list[str], seeds: list[int]) -> None:
    """Step 1 (module docstring)."""
    import numpy as np
    import torch
    import yaml
    from PIL import Image

    from ddoq_ray import storage
    from ddoq_ray.artifacts.train_inputs import load_train_inputs
    from ddoq_ray.config import RunConfig
    from ddoq_ray.context import Run
    from ddoq_ray.data import load_arrays

    cfg = RunConfig.model_validate(yaml.safe_load(storage.read_text(storage.join(run_dir, "config.yaml"))))
    if cfg.train.protocol != "dd_ranking":
        raise SystemExit(f"{run_dir}: train.protocol is {cfg.train.protocol!r}; the check needs dd_ranking")
    run = Run(cfg)
    inputs = load_train_inputs(run)
    size = cfg.train.image_size
    root = out / "cifar-10-batches-py"
    root.mkdir(parents=True, exist_ok=True)
    train = load_arrays(run.train_index, cfg.data.image_column, size)
    for i, part in enumerate(np.array_split(np.arange(len(train["labels"])), 5)):
        _cifar_batch(train["images"][part], train["labels"][part], root / f"data_batch_{i + 1}", f"train {i + 1}")
    _cifar_batch(inputs.test["images"], inputs.test["labels"], root / "test_batch", "test")
    with open(root / "batches.meta", "wb") as f:
        pickle.dump({"label_names": list(run.classes)}, f)
    sets = {}
    for m in methods:
        for s in seeds:
            st = inputs.method_set(m, s)
            d = out / "sets" / f"{m}_s{s}"
            for j, (img, c) in enumerate(zip(st["images"], st["labels"], strict=True)):
                cls = d / f"{int(c):04d}_{run.classes[int(c)]}"  # ImageFolder sorts names: label order kept
                cls.mkdir(parents=True, exist_ok=True)
                Image.fromarray(img).save(cls / f"{j:05d}.png")
            sets[f"{m}_s{s}"] = {"method": m, "seed": s, "n": len(st["labels"]),
                                 "uniform_weights": bool(np.allclose(st["weights"], st["weights"][0]))}
    teacher = inputs.teacher.eval()
    torch.jit.save(torch.jit.trace(teacher, torch.rand(2, 3, size, size)), str(out / "teacher.pt"))
    tc = cfg.train
    proto = {**{k: getattr(tc, k) for k in PROTOCOL_FIELDS}, "lr": tc.resolved_lr()}
    (out / "protocol.json").write_text(json.dumps({
        "run": run_dir, "protocol": proto, "n_classes": len(run.classes), "ipc": cfg.quantize.ipc,
        "teacher": inputs.teacher_info, "sets": sets}, indent=1, default=str))
    print(f"prepared {out}: {len(sets)} sets, test {len(inputs.test['labels'])} images, teacher "
          f"{inputs.teacher_info.get('source')}")


def evaluate(out: Path, threads: int | None = None) -> None:
    """Step 2 (module docstring): DD-Ranking's own training and test loop on each prepared set."""
    import torch
    import torchvision
    import torchvision.datasets.cifar
    from ddranking.metrics import LabelRobustScoreSoft
    from ddranking.utils import build_model, set_seed
    from torchvision import transforms

    if threads:
        torch.set_num_threads(threads)
    meta = json.loads((out / "protocol.json").read_text())
    p, n_classes, ipc = meta["protocol"], meta["n_classes"], meta["ipc"]
    if p["schedule"] != "half_cosine":
        print(f"note: the run's schedule is {p['schedule']!r}; DD-Ranking's 'cosine' is the half cosine "
              "0.5 (1 + cos(pi e / E / 2)) per epoch")
    torchvision.datasets.CIFAR10._check_integrity = lambda self: True  # the run's own files: no md5, no
    torchvision.datasets.cifar.check_integrity = lambda *a, **k: True  # download (no internet here)
    norm = transforms.Normalize(CIFAR_MEAN, CIFAR_STD)
    train_trans = transforms.Compose(
        [transforms.RandomResizedCrop(p["image_size"], scale=(p["min_crop_scale"], 1.0)),
         transforms.RandomHorizontalFlip(), transforms.ToTensor(), norm])  # ours always flips, p = 0.5
    dummy = out / "teachers" / "CIFAR10" / "ConvNet-3" / "ckpt_best.pt"  # DD-Ranking loads one at init;
    dummy.parent.mkdir(parents=True, exist_ok=True)  # replaced by the run's teacher below
    torch.save(build_model("ConvNet-3", n_classes, (32, 32), device="cpu").state_dict(), dummy)
    ev = LabelRobustScoreSoft(
        dataset="CIFAR10", real_data_path=str(out), ipc=ipc, model_name="ConvNet-3", soft_label_criterion="kl",
        loss_fn_kwargs={"temperature": p["temperature"], "scale_loss": False}, data_aug_func="cutmix",
        aug_params={"beta": p["cutmix_beta"]}, soft_label_mode="M", optimizer=p["optimizer"],
        lr_scheduler="cosine", weight_decay=p["weight_decay"], num_eval=1, im_size=(32, 32),
        num_epochs=p["epochs"], syn_batch_size=p["batch_size"], real_batch_size=500,
        save_path=str(out / "ddranking_scores.csv"), num_workers=0, teacher_dir=str(out / "teachers"),
        teacher_model_names=["ConvNet-3"], custom_train_trans=train_trans, device="cpu")
    teacher = torch.jit.load(str(out / "teacher.pt")).eval()
    mean, std = torch.tensor(CIFAR_MEAN).view(1, 3, 1, 1), torch.tensor(CIFAR_STD).view(1, 3, 1, 1)

    class RunTeacher(torch.nn.Module):  # DD-Ranking's normalised input -> the run teacher's [0, 1] input
        def forward(self, x):
            return teacher(x * std + mean)

    ev.teacher_models = [RunTeacher().eval()]
    results = json.loads((out / "ddranking.json").read_text()) if (out / "ddranking.json").exists() else {}
    for key, s in meta["sets"].items():
        if key in results:
            continue
        set_seed(s["seed"])
        model = build_model("ConvNet-3", n_classes, (32, 32), device="cpu")
        t = time.time()
        top1 = ev._compute_soft_label_metrics(model=model, image_tensor=None, image_path=str(out / "sets" / key),
                                              lr=p["lr"], soft_labels=None)
        results[key] = {**s, "top1": float(top1), "wall_s": round(time.time() - t, 1)}
        (out / "ddranking.json").write_text(json.dumps(results, indent=1))
        print(f"DD-Ranking evaluator: {key} top-1 {float(top1):.2f} ({time.time() - t:.0f} s)", flush=True)


def compare(run_dir: str, out: Path) -> None:
    """Step 3 (module docstring)."""
    import pyarrow.compute as pc

    from benchmarks._common import table, write_result
    from ddoq_ray import storage
    from ddoq_ray.assets import assets_root
    from ddoq_ray.rundir import stage_path

    meta = json.loads((out / "protocol.json").read_text())
    ddr = json.loads((out / "ddranking.json").read_text())
    st = storage.read_parquet(storage.join(stage_path(run_dir, "train"), "students.parquet"))
    rows = []
    for key, r in ddr.items():
        mine = st.filter(pc.and_(pc.equal(st.column("method"), r["method"]), pc.equal(st.column("seed"), r["seed"])))
        # students.parquet keeps top-1 as a fraction; DD-Ranking returns percent.
        ours = round(100 * mine.column("top1").to_pylist()[0], 2) if mine.num_rows else None
        rows.append({"set": key, "n": r["n"], "ddoq_ray_top1_pct": ours, "ddranking_top1_pct": round(r["top1"], 2),
                     "difference": None if ours is None else round(ours - r["top1"], 2),
                     "ddranking_wall_s": r["wall_s"]})
    print(table(rows, list(rows[0])))
    root = assets_root()  # the teacher as an `assets:` ref (what assets.resolve reads), not this machine's path
    teacher = json.loads(json.dumps(meta["teacher"]).replace(f"{root}/", "assets:")) if root else meta["teacher"]
    write_result("ddranking_check", {"protocol": meta["protocol"], "teacher": teacher, "rows": rows})


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    a1 = sub.add_parser("prepare")
    a1.add_argument("run")
    a1.add_argument("out", type=Path)
    a1.add_argument("--methods", default="random")
    a1.add_argument("--seeds", default="0")
    a2 = sub.add_parser("evaluate")
    a2.add_argument("out", type=Path)
    a2.add_argument("--threads", type=int, default=None)
    a3 = sub.add_parser("compare")
    a3.add_argument("run")
    a3.add_argument("out", type=Path)
    a = ap.parse_args(argv)
    if a.cmd == "prepare":
        prepare(a.run, a.out, a.methods.split(","), [int(s) for s in a.seeds.split(",")])
    elif a.cmd == "evaluate":
        evaluate(a.out, a.threads)
    else:
        compare(a.run, a.out)


if __name__ == "__main__":
    main()
