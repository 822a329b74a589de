"""A tiny nnU-Net v2 results folder in nnU-Net's own format, for the nnunet segmenter's tests."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

INTENSITY = {"max": 1500.0, "mean": 40.0, "median": 35.0, "min": -1024.0, "percentile_00_5": -200.0,
             "percentile_99_5": 300.0, "std": 120.0}


def arch_kwargs(features=(4, 8, 16), kernel=3, norm=True, stride=2) -> dict:
    n = len(features)
    return {"n_stages": n, "features_per_stage": list(features), "conv_op": "torch.nn.modules.conv.Conv2d",
            "kernel_sizes": [[kernel, kernel]] * n, "strides": [[1, 1]] + [[stride, stride]] * (n - 1),
            "n_conv_per_stage": [1] * n, "n_conv_per_stage_decoder": [1] * (n - 1), "conv_bias": True,
            "norm_op": "torch.nn.modules.instancenorm.InstanceNorm2d" if norm else None,
            "norm_op_kwargs": {"eps": 1e-05, "affine": True} if norm else None,
            "dropout_op": None, "dropout_op_kwargs": None, "nonlin": "torch.nn.LeakyReLU",
            "nonlin_kwargs": {"inplace": True}}


def make_results_folder(root: Path, *, scheme="CTNormalization", patch=(32, 32), channels=("CT",),
                        labels=("background", "lung"), kwargs=None, seed=0, extra_checkpoint=None) -> Path:
    """``root/nnUNetTrainer__nnUNetPlans__2d`` with dataset.json, plans.json and fold_0/checkpoint_final.pth
    holding a randomly initialised PlainConvUNet (under ``torch.manual_seed(seed)``)."""
    from dynamic_network_architectures.architectures.unet import PlainConvUNet

    kwargs = kwargs or arch_kwargs()
    folder = Path(root) / "nnUNetTrainer__nnUNetPlans__2d"
    (folder / "fold_0").mkdir(parents=True, exist_ok=True)
    dataset = {"channel_names": {str(i): c for i, c in enumerate(channels)},
               "labels": {name: i for i, name in enumerate(labels)}, "numTraining": 4, "file_ending": ".png"}
    config = {"data_identifier": "nnUNetPlans_2d", "preprocessor_name": "DefaultPreprocessor", "batch_size": 12,
              "patch_size": list(patch), "median_image_size_in_voxels": [64.0, 64.0], "spacing": [1.0, 1.0],
              "normalization_schemes": [scheme] * len(channels), "use_mask_for_norm": [False] * len(channels),
              "resampling_fn_data": "resample_data_or_seg_to_shape", "batch_dice": True,
              "architecture": {"network_class_name": "dynamic_network_architectures.architectures.unet.PlainConvUNet",
                               "arch_kwargs": kwargs,
                               "_kw_requires_import": ["conv_op", "norm_op", "dropout_op", "nonlin"]}}
    plans = {"dataset_name": "Dataset999_Tiny", "plans_name": "nnUNetPlans", "original_median_spacing_after_transp":
             [999.0, 1.0, 1.0], "original_median_shape_after_transp": [1, 64, 64],
             "image_reader_writer": "NaturalImage2DIO", "transpose_forward": [0, 1, 2],
             "transpose_backward": [0, 1, 2], "configurations": {"2d": config},
             "experiment_planner_used": "ExperimentPlanner", "label_manager": "LabelManager",
             "foreground_intensity_properties_per_channel": {str(i): INTENSITY for i in range(len(channels))}}
    (folder / "dataset.json").write_text(json.dumps(dataset, indent=2))
    (folder / "plans.json").write_text(json.dumps(plans, indent=2))
    torch.manual_seed(seed)
    import pydoc

    built = dict(kwargs)
    for k in ("conv_op", "norm_op", "dropout_op", "nonlin"):
        if built[k] is not None:
            built[k] = pydoc.locate(built[k])
    net = PlainConvUNet(input_channels=len(channels), num_classes=len(labels), deep_supervision=True, **built)
    optim = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.99, nesterov=True)
    # the keys and value types nnU-Net's trainer writes (nnUNetTrainer.save_checkpoint)
    checkpoint = {"network_weights": net.state_dict(), "optimizer_state": optim.state_dict(),
                  "grad_scaler_state": None,
                  "logging": {"mean_fg_dice": [np.float64(0.5)], "ema_fg_dice": [np.float64(0.5)],
                              "dice_per_class_or_region": [[np.float64(0.5)]], "train_losses": [np.float64(-0.3)],
                              "val_losses": [np.float64(-0.2)], "lrs": [0.01], "epoch_start_timestamps": [1.0],
                              "epoch_end_timestamps": [2.0]},
                  "_best_ema": np.float64(0.5), "current_epoch": 1,
                  "init_args": {"plans": plans, "configuration": "2d", "fold": 0, "dataset_json": dataset,
                                "device": torch.device("cpu")},
                  "trainer_name": "nnUNetTrainer", "inference_allowed_mirroring_axes": (0, 1),
                  **(extra_checkpoint or {})}
    torch.save(checkpoint, folder / "fold_0" / "checkpoint_final.pth")
    return folder
