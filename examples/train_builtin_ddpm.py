"""Reproduce the bundled DDPM denoiser ``certframe/plugins/weights/ddpm-synthetic-lung/``.

    python examples/train_builtin_ddpm.py            # about 5 minutes on one free CPU core

Trains a small diffusers UNet2DModel (block_out_channels 16-32-32-64, one ResNet
layer per block, about 0.74 M parameters, 2.9 MB of safetensors) with a linear
1000-step DDPMScheduler predicting epsilon, on 512 synthetic-lung training images
(64x64, grey), timesteps concentrated on 0 .. t*(1.25) (enough for one-shot and
DDIM denoising up to sigma 1.0), 500 Adam steps of batch 16 at lr 1e-3, EMA of
the weights. The same run as a command:

    certframe train denoiser --dataset synthetic-lung --dataset-option count=512 \\
        --dataset-option size=64 --channels 16,32,32,64 --layers-per-block 1 --steps 500 \\
        --batch-size 16 --lr 1e-3 --max-sigma 1.0 --margin 0.25 --seed 0 \\
        --output certframe/plugins/weights/ddpm-synthetic-lung

Deterministic for a given torch version on CPU with one thread.
"""
import shutil
import sys
from pathlib import Path

import torch

from certframe.plugins.datasets.synthetic import SyntheticLung
from certframe.plugins.denoisers.ddpm_training import resume_dir, train_diffusion
from certframe.plugins.denoisers.diffusion import WEIGHTS_DIR

SETTINGS = dict(block_out_channels=(16, 32, 32, 64), layers_per_block=1, steps=500, batch_size=16, lr=1e-3,
                max_sigma=1.0, margin=0.25, beta_schedule="linear", prediction_type="epsilon", ema_decay=0.999,
                seed=0)


def main(output: Path = WEIGHTS_DIR / "ddpm-synthetic-lung"):
    torch.set_num_threads(1)
    train = SyntheticLung(count=512, size=64, seed=0, split="train")
    resume = (resume_dir(output) / "state.json").is_file()
    result = train_diffusion(train, output, **SETTINGS, resume=resume, checkpoint_every=100,
                             info={"dataset": "synthetic-lung",
                                   "dataset_options": {"count": 512, "size": 64, "seed": 0, "split": "train"},
                                   "command": "python examples/train_builtin_ddpm.py"},
                             on_log=lambda r: print(r, flush=True))
    shutil.rmtree(resume_dir(output))  # the training state is not shipped
    print(f"saved {result.output} (t in 0..{result.t_max}, {result.seconds:.0f} s)")


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else WEIGHTS_DIR / "ddpm-synthetic-lung")
