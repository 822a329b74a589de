"""Throughput options: chosen only on CUDA, invisible in the results, no host sync per batch."""
import threading

import pytest
import torch
from conftest import ListDataset, ThresholdSegmenter

from certframe.core.sampler import NoiseVoter
from certframe.core.smoothing import SmoothedSegmenter
from certframe.interfaces import NoiseKey
from certframe.plugins.certifiers.segcertify import SegCertify
from certframe.run import certify_dataset
from certframe.run.accelerate import AcceleratedSmoothedSegmenter, Acceleration, auto_batch_size, prefetch


def test_mixed_precision_and_channels_last_are_chosen_only_on_cuda(monkeypatch):
    cpu = Acceleration().resolve("cpu")
    assert (cpu.precision, cpu.channels_last, cpu.compile) == ("fp32", False, False)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    gpu = Acceleration().resolve(torch.device("cuda:0"))
    assert (gpu.precision, gpu.channels_last) == ("bf16", True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    assert Acceleration().resolve("cuda").precision == "fp16"          # older GPUs
    assert Acceleration(precision="fp32").resolve("cuda").precision == "fp32"
    assert Acceleration(channels_last=False).resolve("cuda").channels_last is False
    for p in ("bf16", "fp16"):
        with pytest.raises(ValueError, match=f"mixed precision \\({p}\\) is only used on CUDA"):
            Acceleration(precision=p).resolve("cpu")
    with pytest.raises(ValueError, match="precision must be one of"):
        Acceleration(precision="int8")


def test_engine_default_on_cpu_is_plain_fp32():
    """An Acceleration with defaults on CPU certifies exactly like no acceleration at all."""
    data = ListDataset([(torch.rand(1, 12, 12), (torch.rand(12, 12) > 0.5).long()) for _ in range(3)])
    kw = dict(sigma=0.25, n0=5, n=40, alpha=0.01, taus=(0.75, 0.9), seed=3, device="cpu")
    plain = list(certify_dataset(data, ThresholdSegmenter(), None, SegCertify(), batch_size=16, **kw))
    fast = list(certify_dataset(data, ThresholdSegmenter(), None, SegCertify(), batch_size="auto",
                                accelerate=Acceleration(), **kw))
    for a, b in zip(plain, fast):
        a.pop("seconds"), b.pop("seconds")
        assert (a.pop("forward_passes"), b.pop("forward_passes")) == (4, 2)   # 5+40 draws: 16 vs auto 40
        assert a == b


class SpySegmenter(ThresholdSegmenter):
    def __init__(self, fail_above=None):
        super().__init__(in_channels=3)
        self.conv = torch.nn.Conv2d(3, 4, 3)          # a 4-D weight whose layout can be checked
        self.seen = []
        self.fail_above = fail_above

    def forward(self, images):
        self.seen.append({"batch": images.shape[0], "autocast": torch.is_autocast_enabled(images.device.type),
                          "dtype": torch.get_autocast_dtype(images.device.type),
                          "channels_last": images.is_contiguous(memory_format=torch.channels_last)
                          and not images.is_contiguous()})
        if self.fail_above is not None and images.shape[0] > self.fail_above:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return super().forward(images)


def test_autocast_and_channels_last_reach_the_model():
    # the bf16 path itself, exercised with CPU autocast (resolve() never picks it on CPU)
    seg = SpySegmenter()
    opts = Acceleration(precision="bf16", channels_last=True, prefetch=0)
    smoothed = AcceleratedSmoothedSegmenter(seg, None, 0.25, opts)
    logits = smoothed.base_logits(torch.rand(3, 3, 8, 8))
    assert logits.dtype == torch.float32 and logits.shape == (3, 2, 8, 8)
    assert seg.seen[-1] == {"batch": 3, "autocast": True, "dtype": torch.bfloat16, "channels_last": True}
    assert seg.conv.weight.is_contiguous(memory_format=torch.channels_last)
    assert not seg.conv.weight.is_contiguous()
    fp32 = AcceleratedSmoothedSegmenter(SpySegmenter(), None, 0.25, Acceleration().resolve("cpu"))
    fp32.base_logits(torch.rand(2, 3, 8, 8))
    assert fp32.segmenter.seen[-1]["autocast"] is False and fp32.segmenter.seen[-1]["channels_last"] is False
    with pytest.raises(ValueError, match="resolved options"):
        AcceleratedSmoothedSegmenter(seg, None, 0.25, Acceleration())


def test_out_of_memory_halves_the_batch_and_keeps_the_votes():
    x = torch.rand(3, 10, 10)
    ref = SmoothedSegmenter(ThresholdSegmenter(3), None, 0.5).voter(x, NoiseKey(1, "x"), batch_size=4).counts("e", 50)
    seg = SpySegmenter(fail_above=4)
    smoothed = AcceleratedSmoothedSegmenter(seg, None, 0.5, Acceleration().resolve("cpu"))
    got = smoothed.voter(x, NoiseKey(1, "x"), batch_size=16).counts("e", 50)
    assert torch.equal(ref, got)
    assert smoothed.max_batch == 4
    assert max(s["batch"] for s in seg.seen[3:]) <= 4          # after 16 -> 8 -> 4, never more
    bad = AcceleratedSmoothedSegmenter(SpySegmenter(fail_above=0), None, 0.5, Acceleration().resolve("cpu"))
    with pytest.raises(torch.cuda.OutOfMemoryError):
        bad.base_logits(torch.rand(2, 3, 4, 4))


def test_auto_batch_size_on_cpu_scales_with_the_image():
    smoothed = SmoothedSegmenter(ThresholdSegmenter(), None, 0.25)
    assert auto_batch_size(smoothed, torch.rand(1, 256, 256), 1000) == 32
    assert auto_batch_size(smoothed, torch.rand(1, 512, 512), 1000) == 8
    assert auto_batch_size(smoothed, torch.rand(3, 2048, 2048), 1000) == 1
    assert auto_batch_size(smoothed, torch.rand(1, 64, 64), 100) == 100      # capped by n


def test_compile_is_optional(monkeypatch):
    calls = []
    monkeypatch.setattr(torch, "compile", lambda fn, **kw: calls.append(kw) or fn)
    AcceleratedSmoothedSegmenter(ThresholdSegmenter(), None, 0.25, Acceleration().resolve("cpu"))
    assert calls == []
    AcceleratedSmoothedSegmenter(ThresholdSegmenter(), None, 0.25,
                                 Acceleration(compile=True).resolve("cpu"))
    assert calls == [{"dynamic": True}]


def test_prefetch_keeps_order_and_raises_where_loading_fails():
    data = ListDataset([(torch.full((1, 4, 4), i / 10), torch.zeros(4, 4, dtype=torch.long)) for i in range(6)])
    got = list(prefetch(data, [4, 0, 5, 1], depth=2))
    assert [i for i, _ in got] == [4, 0, 5, 1] and [s.id for _, s in got] == ["item-4", "item-0", "item-5",
                                                                            "item-1"]
    assert torch.equal(got[0][1].image, data[4].image)
    assert [i for i, _ in prefetch(data, range(3), depth=0)] == [0, 1, 2]
    # loading happens in another thread, ahead of the consumer
    threads = []

    class Recording(ListDataset):
        def __getitem__(self, i):
            threads.append(threading.current_thread().name)
            return super().__getitem__(i)

    list(prefetch(Recording(data.pairs), range(3), depth=2))
    assert set(threads) == {"certframe-prefetch"}

    class Broken(ListDataset):
        def __getitem__(self, i):
            if i == 2:
                raise FileNotFoundError("image 2 is missing")
            return super().__getitem__(i)

    it = prefetch(Broken(data.pairs), range(4), depth=2)
    assert next(it)[0] == 0 and next(it)[0] == 1
    with pytest.raises(FileNotFoundError, match="image 2 is missing"):
        next(it)
    # stopping early does not hang the loader
    it = prefetch(data, range(6), depth=1)
    next(it)
    it.close()


def test_votes_need_no_host_sync_per_batch(monkeypatch):
    """Counting the votes of 100 draws syncs with the host the same number of times in 2 or 50 batches."""
    counter = {"n": 0}
    for name in ("item", "cpu", "tolist", "numpy", "__bool__", "__int__", "__float__"):
        original = getattr(torch.Tensor, name)

        def spy(self, *a, _original=original, **k):
            counter["n"] += 1
            return _original(self, *a, **k)
        monkeypatch.setattr(torch.Tensor, name, spy)
    x = torch.rand(1, 8, 8)
    syncs = []
    for batch in (50, 2):
        counter["n"] = 0
        NoiseVoter(SmoothedSegmenter(ThresholdSegmenter(), None, 0.25).base_labels, x, key=NoiseKey(0, "x"), sigma=0.25,
                   num_classes=2, batch_size=batch).counts("estimation", 100)
        syncs.append(counter["n"])
    assert syncs[0] == syncs[1] <= 1       # one total check per call, none per batch


def test_certify_cli_options(tmp_path):
    import json

    from click.testing import CliRunner

    from certframe.cli import main

    base = ["certify", "--dataset-option", "count=2", "--dataset-option", "size=32", "--segmenter-option",
            "weights=synthetic-lung", "--n0", "2", "-n", "8", "--device", "cpu", "--quiet"]
    bad = CliRunner().invoke(main, base + ["--precision", "fp16", "--output", str(tmp_path / "a")])
    assert bad.exit_code != 0 and "mixed precision (fp16) is only used on CUDA" in bad.output
    bad = CliRunner().invoke(main, base + ["--batch-size", "many", "--output", str(tmp_path / "b")])
    assert bad.exit_code != 0 and "expected a positive number of draws or 'auto'" in bad.output
    ok = CliRunner().invoke(main, base + ["--batch-size", "auto", "--prefetch", "1", "--output", str(tmp_path / "c")])
    assert ok.exit_code == 0, ok.output
    execution = json.loads((tmp_path / "c" / "manifest.json").read_text())["execution"]
    assert execution["batch_size"] == "auto"
    assert execution["accelerate"] == {"precision": "fp32", "channels_last": False, "compile": False,
                                       "prefetch": 1}
