"""Write a small example data set in the ``example-csv`` layout (procedural, seeded).

    python -m certframe_example_plugin.data ROOT [--count 24] [--size 32] [--seed 0]

Each item is a grey image with one bright disk (the foreground) on a textured
background; the first 2/3 of the items are ``train``, then ``val``, then ``test``.
"""
from __future__ import annotations

import argparse
import csv
from pathlib import Path

import numpy as np
from PIL import Image


def write_example_data(root: str | Path, count: int = 24, size: int = 32, seed: int = 0) -> Path:
    """Write ``root/index.csv``, ``root/images/*.png`` and ``root/masks/*.png``; return ``root``."""
    if count < 3 or size < 8:
        raise ValueError(f"need count >= 3 and size >= 8, got count={count}, size={size}")
    root = Path(root)
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "masks").mkdir(parents=True, exist_ok=True)
    yy, xx = np.mgrid[:size, :size] / size
    n_train, n_val = round(count * 2 / 3), round(count / 6)
    rows = []
    for i in range(count):
        rng = np.random.default_rng([seed, i])
        cy, cx = rng.uniform(0.3, 0.7, size=2)
        r = rng.uniform(0.12, 0.25)
        disk = (yy - cy) ** 2 + (xx - cx) ** 2 < r ** 2
        background = 0.3 + 0.1 * np.sin(xx * rng.uniform(8, 16)) * np.cos(yy * rng.uniform(8, 16))
        image = np.where(disk, 0.75, background) + 0.03 * rng.standard_normal((size, size))
        name = f"case{i:03d}.png"
        Image.fromarray((np.clip(image, 0, 1) * 255).round().astype(np.uint8)).save(root / "images" / name)
        Image.fromarray((disk * 255).astype(np.uint8)).save(root / "masks" / name)
        split = "train" if i < n_train else "val" if i < n_train + n_val else "test"
        rows.append({"image": f"images/{name}", "mask": f"masks/{name}", "split": split})
    with open(root / "index.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["image", "mask", "split"])
        writer.writeheader()
        writer.writerows(rows)
    return root


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("root")
    p.add_argument("--count", type=int, default=24)
    p.add_argument("--size", type=int, default=32)
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    print(write_example_data(a.root, a.count, a.size, a.seed))


if __name__ == "__main__":
    main()
