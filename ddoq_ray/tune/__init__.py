"""``ddoq-ray tune``: a Ray Tune sweep of student hyperparameters on one distilled set, scored on validation data.

Search space: ``tune.search_space`` (YAML) maps ``train`` fields to ``ray.tune`` samplers
(:func:`param_space`). Every trial trains one student with :func:`ddoq_ray.students.train.fit_student`'s loop on
the run's decoded set (``tune.method``), reports ``val_top1`` every ``tune.eval_every`` epochs, and is early-stopped
by ASHA (``time_attr="epoch"``). Two trial runners:

* ``trainer: function`` (default): the loop *is* the Tune function trainable (``ray.tune.report`` with a
  checkpoint per validation). Use on one small node: a TorchTrainer inside each Tune trial leaks placement groups
  when ASHA stops it there (ray-project/ray#54305, notes G11).
* ``trainer: torch_trainer``: each trial is a light driver (no CPU) that runs a Ray Train ``TorchTrainer``
  (``train.num_workers`` x ``train.cpus_per_worker``) whose reports reach Tune through ``TuneReportCallback``.
  When Tune stops such a trial (ASHA, also at ``max_t``), only Train's ``PlacementGroupCleaner`` frees its worker
  placement group, and it needs the Ray State API (the dashboard): :func:`check_torch_trainer` refuses the sweep
  without it, and :func:`sweep` waits for the groups to be freed before it returns.

Validation: ``val_split: train_holdout`` takes ``val_per_class`` real train images per class, preferring images the
encode stage did not see (with ``data.max_per_class`` those exist; on a full split they were encoded, so they
shaped the k-means a little, but no student trains on them and they are disjoint from the test split);
``val_split: test`` tunes on the test split and logs a warning (the reported accuracy is then optimistic).

Outputs in ``<run>/tune/``: the Tune experiment ``sweep-<fingerprint>/`` (``Tuner.restore`` resumes it when it
exists), ``results.parquet`` (one row per trial: ``trial_id``, the swept fields, ``epochs`` (planned),
``epoch`` (reached), ``val_top1`` (last), ``best_val_top1``, ``test_top1`` (trials that finished, with
``report_test``), ``stopped_early``, ``error``) and ``best.json`` (the best finished trial by final val top-1).
"""

from .run import fingerprint, run_tune, validation_set
from .space import concurrency, max_epochs, param_space
from .sweep import best_trial, check_torch_trainer, sweep, table, write_results
from .trials import CKPT_FILE

__all__ = ["CKPT_FILE", "best_trial", "check_torch_trainer", "concurrency", "fingerprint", "max_epochs",
           "param_space", "run_tune", "sweep", "table", "validation_set", "write_results"]
