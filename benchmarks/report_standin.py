"""The docs/benchmarks.md section of ``bench_standin.py`` (the ImageNet-shaped stand-in run), from its JSON."""

from __future__ import annotations

COLS = ["size", "rows", "index_mb", "wall_s", "encode_s", "quantize_s", "other_s", "encode_img_s",
        "overhead_ms_per_img", "latent_files", "driver_peak_mb", "workers_peak_sum_mb", "worker_peak_max_mb"]


def standin_section(st: dict | None, fmt) -> list[str]:
    """Markdown lines for the stand-in run (``fmt``: the report's table formatter); [] when it has not run."""
    if not st:
        return []
    m = st["machine"]
    L = ["## ImageNet-shaped stand-in run (`bench_standin.py`)", "",
         "1,000 classes x 1,281 rows at full size (1,281,000 rows; ImageNet-1K train has 1,281,167) of real JPEG "
         "bytes (the CIFAR-10 train JPEGs, 32 px, reused cyclically) in HF-layout Parquet shards (`image` struct "
         "{bytes, path}, int64 `label`, labels shuffled across shards as on the hub; 300 shards at full size), "
         "through the real `ddoq-ray quantize` (list -> encode -> quantize, IPC 10, faiss Lloyd 20 iterations) on a "
         f"local {m['cores']}-CPU Ray cluster. The encoder is a random-weight f=8 `AutoencoderTiny` (8 channels; "
         f"alone: {st['encoder_kernel_img_s']:,} img/s on 2 threads), so the times are the pipeline's own cost. "
         "`other_s`: CLI start, Ray start, listing and the commit of results. Memory: peak RSS sampled every 0.5 s "
         "of the driver, and of the sum / the largest of the processes it started (GCS, raylet, workers; the object "
         "store's shared pages count in each process that maps them).", "",
         fmt(st["sizes"], COLS), ""]
    r = st.get("resume")
    if r:
        L += [f"Resume: `ddoq-ray encode` on the {r['rows']:,}-row split ({r['shards']} shards of "
              f"{r['shard_rows']:,} rows) SIGKILLed with its Ray processes once {r['done_at_kill']} shards had "
              f"done markers; `ddoq-ray quantize` then re-encoded {r['encoded_shards']} shards and kept "
              f"{r['resumed_shards']}. Rows on disk in unfinished shards at the kill (work lost and redone): "
              f"{r['lost_rows_redone']:,} = {r['lost_in_shards']} shards. Final accounting: {r['encoded']:,} encoded "
              f"+ {r['skipped']} skipped = input, no duplicate id (the encode commit checks both); resumed run "
              f"{r['resume_wall_s']} s.", ""]
    L += [f"- {n}" for n in st.get("notes", [])] + [""]
    return L
