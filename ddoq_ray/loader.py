"""A torch ``Dataset`` over a distilled set, for training code outside ddoq-ray.

:class:`DistilledDataset` reads a finished run directory (its decode stage, weights as the students got them:
:func:`ddoq_ray.export.distilled_table`) or a ``ddoq-ray export`` folder of any format
(:func:`ddoq_ray.export.read_export`), and yields ``(image, label, weight)``: image float32 ``[3, S, S]`` in
[0, 1] (the students' input; ``ddoq_ray.students.models`` normalise inside the model), label int, weight float.
With ``train=True`` each item gets the protocol's per-sample augmentation, RandomResizedCrop(scale=
(min_crop_scale, 1)) + horizontal flip (:func:`ddoq_ray.students.augment.random_resized_crop_flip`); the
protocol's batch-level CutMix/Mixup is :func:`ddoq_ray.students.losses.cutmix` on a collated batch.

Training example (weighted loss, the DDOQ protocol's choice; or draw by weight with :func:`weighted_sampler`)::

    ds = DistilledDataset("runs/cifar10_taesd_ipc10")
    loader = torch.utils.data.DataLoader(ds, batch_size=64, shuffle=True)
    model = build_model("convnet3", len(ds.classes), ds.image_size)
    opt = torch.optim.AdamW(model.parameters(), 1e-3)
    for epoch in range(300):
        for x, y, w in loader:
            loss = (w * F.cross_entropy(model(x), y, reduction="none")).sum() / w.sum()
            opt.zero_grad(); loss.backward(); opt.step()
"""

from __future__ import annotations

import numpy as np
import torch

from . import storage


class DistilledDataset(torch.utils.data.Dataset):
    """``(image float32 [3,S,S] in [0,1], label int, weight float)`` for every synthetic image of a distilled set.

    Args:
        run_or_export: a run directory (local path or URI) or an export folder (``ddoq_export.json`` inside).
        method: ``ddoq`` | ``d4m``, for a run directory (an export carries its own).
        train: apply the protocol's crop + flip to every item (False: the plain images).
        image_size: side S in px; default the protocol's ``train.image_size``.
        seed: seeds the augmentation generator (one per dataset object; each DataLoader worker gets a copy, so
            give workers their own seed in ``worker_init_fn`` if they must differ).
    Attributes:
        classes (list[str], index = label), weights (float32 tensor [n]), labels (int64 tensor [n]),
        images (uint8 numpy [n,S,S,3]), protocol (dict), method (str), image_size (int).
    Raises:
        ddoq_ray.export.ExportError: neither a run with a complete decode stage nor an export folder.
    """

    def __init__(self, run_or_export: str, method: str = "ddoq", train: bool = True, image_size: int | None = None,
                 seed: int = 0):
        from .export import EXPORT_META, distilled_table, read_export
        from .images import decode_image

        loc = storage.normalize(run_or_export)
        if storage.is_file(storage.join(loc, EXPORT_META)):
            table, meta = read_export(loc)
        else:
            table, meta = distilled_table(loc, method)
        self.method = table.column("method")[0].as_py() if table.num_rows else method
        self.classes: list[str] = list(meta["classes"])
        self.protocol: dict = dict(meta["protocol"])
        self.image_size = int(image_size or self.protocol["image_size"])
        self.images = np.stack([decode_image(b, self.image_size) for b in table.column("image").to_pylist()])
        self.labels = torch.tensor(table.column("label").to_numpy(), dtype=torch.int64)
        self.weights = torch.tensor(table.column("weight").to_numpy(), dtype=torch.float32)
        self.train = train
        self.generator = torch.Generator().manual_seed(seed)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int, float]:
        from .students.augment import random_resized_crop_flip

        x = torch.from_numpy(self.images[i].copy()).permute(2, 0, 1).float().div_(255.0)
        if self.train:
            x = random_resized_crop_flip(x[None], self.protocol["min_crop_scale"], self.generator)[0]
        return x, int(self.labels[i]), float(self.weights[i])


def weighted_sampler(weights: DistilledDataset | torch.Tensor | np.ndarray, num_samples: int | None = None,
                     replacement: bool = True, generator: torch.Generator | None = None
                     ) -> torch.utils.data.WeightedRandomSampler:
    """``torch.utils.data.WeightedRandomSampler`` drawing images with probability ∝ their weight (the
    sampling counterpart of the weighted loss: the same expected gradient, E[w·loss] = Σ p·loss).

    Args:
        weights: a :class:`DistilledDataset` or float weights [n] (>= 0, not all 0).
        num_samples: draws per epoch (default n). replacement, generator: as torch's sampler.
    """
    w = weights.weights if isinstance(weights, DistilledDataset) else torch.as_tensor(weights, dtype=torch.double)
    return torch.utils.data.WeightedRandomSampler(w.double(), num_samples or len(w), replacement=replacement,
                                                  generator=generator)
