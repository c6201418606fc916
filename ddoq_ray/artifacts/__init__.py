"""Each stage's on-disk schema and its readers: the only thing stages import from each other.

One module per artifact (the schema is in its docstring); readers take a stage's committed folder
(:func:`ddoq_ray.rundir.stage_path`) or the run directory, on any filesystem (:mod:`ddoq_ray.storage`):

- :mod:`~ddoq_ray.artifacts.latents`: ``encode/`` latents, meta, skipped rows;
- :mod:`~ddoq_ray.artifacts.centroids`: ``quantize/`` centroids, cell masses, per-class W2, assignments;
- :mod:`~ddoq_ray.artifacts.subsets`: ``subsets/`` the random real subset of every seed (the one draw);
- :mod:`~ddoq_ray.artifacts.synthetic`: ``decode/`` images and manifest;
- :mod:`~ddoq_ray.artifacts.teacher`: ``teacher/`` the teacher's weights or reference and its top-1;
- :mod:`~ddoq_ray.artifacts.methods`: method -> (images, labels, weights), the one home of that mapping;
- :mod:`~ddoq_ray.artifacts.train_inputs`: what students of a run share (test split, teacher, sets).
"""
