"""What keeping results safe costs: run-folder writes per image vs certifying it.

    python benchmarks/run_folder.py            # 256x256, 3 classes, 3 taus, 50 images

For each image the run folder appends its rows to results.csv (one write, flush,
fsync) and saves its certified label maps as a compressed npz (atomic rename).
This prints the time of those writes per image, the size of a certificate file
per image, and the time of the final step (sort, Parquet, summary), next to a
reference cost of certifying one image: 100 forward passes of a small MONAI UNet
at 256x256 on this machine's CPU. Figures from one run on a shared, noisy
machine: read the ratios. Nothing here asserts.
"""
from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch


def main(side: int = 256, images: int = 50, taus=(0.6, 0.75, 0.9)):
    from certframe.run.folder import RunFolder

    torch.set_num_threads(1)
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:side, :side]
    with tempfile.TemporaryDirectory() as tmp:
        run = RunFolder(Path(tmp) / "run")
        run.start({"config": {"taus": list(taus)}, "dataset": {"sha256": "x"}})
        write = 0.0
        for i in range(images):
            mask = (((yy - side / 2) ** 2 + (xx - side / 2.5) ** 2) < (side / 4) ** 2).astype(np.int64)
            mask[(yy - side / 3) ** 2 + (xx - side / 1.5) ** 2 < (side / 8) ** 2] = 2
            labels = np.stack([np.where(rng.random((side, side)) < 0.02 * (k + 1), -1, mask)
                               for k in range(len(taus))])
            image = rng.random((3, side, side)).astype(np.float32) * 0.2 + mask[None] * 0.3
            rows = [{"image_id": f"img-{i}", "index": i, "segmenter": "s", "denoiser": "none",
                     "certifier": "segcertify", "sigma": 0.25, "tau": t, "radius": 0.1, "certified_dice": 0.9,
                     "clean_dice": 0.95, "abstain_rate": 0.02, "seconds": 1.0} for t in taus]
            t0 = time.perf_counter()
            run.save_certificate(i, labels=labels, taus=taus, mask=mask, clean=mask, image=image)
            run.append(rows)
            write += time.perf_counter() - t0
        t0 = time.perf_counter()
        run.finish()
        finish = time.perf_counter() - t0
        size = np.mean([p.stat().st_size for p in (run.path / "certificates").glob("*.npz")])

    from monai.networks.nets import UNet

    net = UNet(2, 3, 3, channels=(16, 32, 64, 128), strides=(2, 2, 2)).eval()
    x = torch.rand(25, 3, side, side)
    with torch.inference_mode():
        net(x[:2])
        t0 = time.perf_counter()
        for _ in range(4):
            net(x)
        forward = time.perf_counter() - t0
    raw = side * side * (3 + 3 * len(taus) * 8 + 2 * 8)
    print(f"image {side}x{side}, {len(taus)} taus, {images} images")
    print(f"run-folder writes per image (csv rows fsync + certificate npz): {write / images * 1e3:8.1f} ms")
    print(f"certificate file per image: {size / 1024:8.1f} KiB  (vs {raw / 1024:.0f} KiB as raw int64/uint8 arrays)")
    print(f"finish (sort, parquet, summary) for {images} images: {finish * 1e3:8.1f} ms")
    print(f"100 UNet forward passes (one image at n=100): {forward * 1e3:8.1f} ms")
    print(f"ratio writes / certification of one image: {write / images / forward:.4f}")


if __name__ == "__main__":
    main(*(int(a) for a in sys.argv[1:3]))
