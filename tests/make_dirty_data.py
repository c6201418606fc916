"""Make a dirty ImageFolder copy of a few CIFAR-10 classes: every kind of bad file the ingest must survive.

Usage: python tests/make_dirty_data.py OUT_DIR [--per-class N]   (also imported by tests/test_bad_input.py)

Returns/prints the expected outcome: which relative paths must be skipped (and why) and which must be encoded.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import struct
import sys
import zlib
from pathlib import Path

import pyarrow.parquet as pq
from PIL import Image

CLASSES = ("airplane", "cat", "ship")


def png_bomb(width: int = 30000, height: int = 30000) -> bytes:
    """A tiny PNG whose header claims width x height pixels (PIL refuses it as a decompression bomb)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 16)) + chunk(b"IEND", b"")


def encoded(im: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    im.save(buf, format=fmt, **kw)
    return buf.getvalue()


def make(out: Path, train_parquet: Path, per_class: int = 20) -> dict:
    """Write the dirty tree; return {"skipped": {relpath: reason fragment}, "ok": [relpaths], "ignored": [...]}."""
    t = pq.read_table(train_parquet, columns=["image", "label"])
    labels = t.column("label").to_pylist()
    images = t.column("image")
    classes = json.loads((train_parquet.parent / "classes.json").read_text())
    ok, skipped = [], {}
    for name in CLASSES:
        c = classes.index(name)
        rows = [i for i, lab in enumerate(labels) if lab == c][:per_class]
        (out / name).mkdir(parents=True, exist_ok=True)
        for i in rows:
            p = out / name / f"{i:05d}.jpg"
            p.write_bytes(images[i].as_py())
            ok.append(f"{name}/{p.name}")
    good = Image.open(io.BytesIO(images[0].as_py())).convert("RGB")
    cat = out / "cat"
    # Files that must be skipped, each with the reason the manifest must give.
    (cat / "truncated.jpg").write_bytes(encoded(good, "JPEG")[:200])
    skipped["cat/truncated.jpg"] = "cannot decode"
    (cat / "empty.jpg").write_bytes(b"")
    skipped["cat/empty.jpg"] = "empty file"
    (cat / "text.jpg").write_text("this is not an image")
    skipped["cat/text.jpg"] = "cannot decode"
    (cat / "corrupt.png").write_bytes(encoded(good, "PNG")[:60] + b"\0" * 40)
    skipped["cat/corrupt.png"] = "cannot decode"
    (cat / "bomb.png").write_bytes(png_bomb())
    skipped["cat/bomb.png"] = "decompression-bomb"
    # Odd but valid files that must be encoded.
    ship = out / "ship"
    extra = {
        "gray.png": encoded(good.convert("L"), "PNG"),
        "cmyk.jpg": encoded(good.convert("CMYK"), "JPEG"),
        "rgba.png": encoded(good.convert("RGBA"), "PNG"),
        "palette.png": encoded(good.convert("P"), "PNG"),
        "deep16.png": encoded(good.convert("I;16"), "PNG"),
        "tiny1x1.png": encoded(good.resize((1, 1)), "PNG"),
        "animated.gif": encoded(good, "GIF", save_all=True, append_images=[good.rotate(90)]),
        "with space.jpg": encoded(good, "JPEG"),
    }
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees clockwise to display
    extra["exif_rotated.jpg"] = encoded(good.resize((48, 32)), "JPEG", exif=exif)
    for fname, data in extra.items():
        (ship / fname).write_bytes(data)
        ok.append(f"ship/{fname}")
    (ship / "nested" / "deeper").mkdir(parents=True)
    (ship / "nested" / "deeper" / "n.png").write_bytes(encoded(good, "PNG"))
    ok.append("ship/nested/deeper/n.png")
    raw = os.fsencode(str(ship)) + b"/caf\xe9.png"  # a non-UTF-8 file name
    with open(raw, "wb") as f:
        f.write(encoded(good, "PNG"))
    ok.append("ship/caf\\xe9.png")
    (out / "airplane" / "README.txt").write_text("stray file, not an image")
    (out / "notes.md").write_text("stray file at the root")
    return {"skipped": skipped, "ok": sorted(ok), "ignored": ["airplane/README.txt", "notes.md"]}


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", type=Path)
    ap.add_argument("--per-class", type=int, default=20)
    ap.add_argument("--train", type=Path,
                    default=Path(__file__).resolve().parents[2] / "shared/data/cifar10/train.parquet")
    a = ap.parse_args()
    json.dump(make(a.out, a.train, a.per_class), sys.stdout, indent=1)
