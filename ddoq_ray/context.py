"""``Run``: the resolved inputs of one run (locations, class lists, split indexes), handed to every stage.

Stages receive a :class:`Run` and never import the pipeline; everything here is computed once per run and read
from here (the class list, the train and test indexes, the teacher location).
"""

from __future__ import annotations

import os
import shutil
import tempfile

import numpy as np
import pyarrow as pa

from . import storage
from .assets import assets_root, is_named_teacher, resolve
from .config import RunConfig
from .driver_memory import mark, release
from .errors import UserValueError
from .index_file import IndexFile


class Run:
    """Resolved inputs of one run, shared by the stages.

    Attributes:
        cfg: the validated config.
        dir: the run directory (local path or URI).
        root: the assets root; ``train_src`` / ``test_src`` / ``vae_path`` / ``teacher_path``: resolved locations
            (``teacher_path`` is None for a library teacher ``timm:``/``torchvision:`` or a teacher trained here).
    """

    def __init__(self, cfg: RunConfig):
        self.cfg = cfg
        self.dir = storage.normalize(cfg.output_dir)  # a local path or a URI (s3://, gs://)
        storage.resolve(self.dir, field="output_dir")  # an unsupported scheme fails here, naming the field
        self.root = assets_root(cfg.assets_root)
        self.train_src = resolve(cfg.data.train, self.root, "data")
        self.test_src = resolve(cfg.data.test, self.root, "data") if cfg.data.test else None
        self.vae_path = resolve(cfg.encode.vae, self.root, "model")
        # A library teacher (timm:/torchvision:) is no file: its weights come from the library's cache or download.
        ref = cfg.train.teacher
        self.teacher_path = resolve(ref, self.root, "data") if ref and not is_named_teacher(ref) else None
        self._train_index: IndexFile | None = None
        self._test_index: pa.Table | None = None
        self.classes: list[str] | None = None

    @property
    def train_index_file(self) -> IndexFile:
        """The train split's index (:class:`ddoq_ray.index_file.IndexFile`: ``id``, ``label``, image reference),
        listed once into a temporary folder (deleted with the last reference to it); sets :attr:`classes`. The driver
        reads from it what a stage needs (labels, a shard's ids, a few rows) instead of holding the index."""
        if self._train_index is None:
            from .index_file import list_split_file

            tmp = tempfile.mkdtemp(prefix="ddoq-index-")
            try:
                index, self.classes = list_split_file(self.train_src, self.cfg.data, os.path.join(tmp, "train.parquet"),
                                                      self.cfg.data.max_per_class)
            except BaseException:
                shutil.rmtree(tmp, ignore_errors=True)
                raise
            self._train_index = index.delete_with(tmp)
            release()  # the listing's temporaries (per-file tables, id hashes), kept mapped by the allocators
            mark("listed", rows=self._train_index.num_rows)
        return self._train_index

    @property
    def train_index(self) -> pa.Table:
        """The whole train index as an Arrow table, read from :attr:`train_index_file` at each access (for
        CIFAR-sized consumers: teacher, student sets; ImageNet-scale driver code reads the file instead)."""
        return self.train_index_file.table()

    @property
    def test_index(self) -> pa.Table:
        """The test split's index with labels in the train split's class order (``data.max_test_per_class``).

        Raises:
            UserValueError: ``data.test`` is not set.
        """
        if self._test_index is None:
            from .data import list_split

            self.require_test()
            _ = self.train_index_file  # the class list the test labels must follow
            # Test labels are mapped to the train split's classes by name (a missing or extra class is an error).
            self._test_index, _ = list_split(self.test_src, self.cfg.data, self.cfg.data.max_test_per_class,
                                             train=self.train_src)
        return self._test_index

    def require_test(self) -> None:
        if self.test_src is None:
            raise UserValueError("data.test is not set: students and metrics need a real test split to be "
                                 "evaluated on; set data.test to a Parquet file or ImageFolder")

    @property
    def all_classes(self) -> list[str]:
        """Class names of the whole dataset before ``data.class_subset`` (a checkpoint teacher's logit order)."""
        from .data import split_classes

        return split_classes(self.train_src, self.cfg.data)

    def prepare(self) -> None:
        """Create the run directory with the resolved config, versions and class mapping.

        Raises:
            UserValueError: a class has fewer images than IPC and ``quantize.small_class`` is ``error``.
        """
        from .config import dump_config
        from .results import versions

        storage.check_writable(self.dir, "output_dir")
        storage.write_text(storage.join(self.dir, "config.yaml"), dump_config(self.cfg))
        storage.write_json(storage.join(self.dir, "versions.json"), versions())
        counts = np.bincount(self.train_index_file.labels(), minlength=len(self.classes))
        small = [f"{self.classes[c]!r} ({counts[c]})" for c in np.flatnonzero(counts < self.cfg.quantize.ipc)]
        if small and self.cfg.quantize.small_class == "error":  # fail before hours of encoding, not after
            raise UserValueError(f"classes with fewer images than quantize.ipc={self.cfg.quantize.ipc}: "
                                 f"{', '.join(small[:10])}; lower ipc or set quantize.small_class=shrink")
        if self.cfg.decode.mode == "sd_img2img":  # class names become prompts: refuse bare numbers before encoding
            from .decode import check_prompt_names

            check_prompt_names(self.classes, self.cfg.decode.allow_numeric_prompts)
        storage.write_json(storage.join(self.dir, "classes.json"), self.classes, indent=1)
