"""The example plugin's own tests: what a plugin author writes.

The contract helper (certframe.contract) checks the segmenter and the data set
against certframe's plugin contract; the other tests check this plugin's own
behaviour: options reach it, the checkpoint round-trips, the certificate is useful.
"""
import pytest
import torch

import certframe_example_plugin
from certframe import SmoothedSegmenter
from certframe.contract import check_dataset, check_plugin, check_segmenter
from certframe.interfaces import NoiseKey
from certframe.registry import PluginError, get_registry
from certframe_example_plugin.dataset import CSVDataset
from certframe_example_plugin.segmenter import TinyCNN


def test_segmenter_honours_the_certframe_contract(trained_weights, tmp_path):
    from certframe.plugins.segmenters.monai_segmenter import WEIGHTS_DIR

    report = check_segmenter(TinyCNN, options={"weights": str(trained_weights)}, bad_options=[
        {"weights": str(tmp_path / "missing.safetensors")},           # FileNotFoundError
        {"weights": str(WEIGHTS_DIR / "synthetic-lung.safetensors")},  # another model's weights: ValueError
    ])
    assert {"output shape", "determinism", "device", "bad input", "bad options"} <= set(report.passed)
    check_segmenter(TinyCNN, options={"in_channels": 3, "num_classes": 3, "width": 4},
                    bad_options=[{"width": 0}])  # untrained, for training


def test_dataset_honours_the_certframe_contract(example_root):
    report = check_dataset(CSVDataset, options={"root": str(example_root), "split": "test", "size": 24},
                           bad_options=[{"split": "holdout"}, {"csv": "missing.csv"}, {"in_channels": 2},
                                        {"root": str(example_root / "images")}])
    assert {"sample", "ids", "determinism", "index range", "identity", "bad options"} <= set(report.passed)


def test_registered_through_the_hooks_with_options_reaching_the_factories(example_root, trained_weights):
    reg = get_registry(load_entrypoints=False, plugins=[("example", certframe_example_plugin)])
    assert reg.get("segmenter", "example-cnn").factory is TinyCNN
    data = reg.create("dataset", "example-csv", root=str(example_root), split="val")
    assert [data[i].id for i in range(len(data))] == ["case016", "case017", "case018", "case019"]
    seg = reg.create("segmenter", "example-cnn", weights=str(trained_weights))
    assert seg.weights_path == str(trained_weights) and seg.config["width"] == 8
    with pytest.raises(PluginError, match=r"does not accept option\(s\) \['wieghts'\]"):
        reg.create("segmenter", "example-cnn", wieghts="x")
    check_plugin("dataset", "example-csv", registry=reg, options={"root": str(example_root)})


def test_checkpoint_round_trips_and_gives_the_architecture(trained_weights):
    a = TinyCNN(weights=str(trained_weights))
    b = TinyCNN(weights=str(trained_weights))
    x = torch.rand(1, 1, 20, 20)
    assert torch.equal(a(x), b(x))
    assert any(p.abs().sum() > 0 for p in a.parameters())
    pickle = trained_weights.with_name("tiny-cnn.pt")
    pickle.write_bytes(b"not loaded")
    with pytest.raises(ValueError, match=r"pickled checkpoints \(.pt, .pth, .ckpt\) are not loaded"):
        TinyCNN(weights=str(pickle))


def test_certified_segmentation_is_useful_and_random_weights_are_not(example_root, trained_weights):
    test = CSVDataset(example_root, split="test")
    reg = get_registry(load_entrypoints=False, plugins=[("example", certframe_example_plugin)])
    certifier = reg.create("certifier", "segcertify")
    from certframe.core.metrics import mean_dice

    def certified_dice(seg):
        g = SmoothedSegmenter(seg, None, sigma=0.25)
        dice = []
        for s in test:
            cert, = g.certify(s.image, certifier, key=NoiseKey(0, s.id), n0=10, n=100, alpha=0.01, taus=[0.75])
            dice.append(mean_dice(cert.labels, s.mask, 2))
        return sum(dice) / len(dice)

    trained = certified_dice(TinyCNN(weights=str(trained_weights)))
    torch.manual_seed(0)
    untrained = certified_dice(TinyCNN())
    print(f"certified Dice at sigma 0.25: trained {trained:.3f}, random weights {untrained:.3f}")
    assert trained > 0.6 and untrained < 0.3
