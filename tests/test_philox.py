"""The one noise stream: Philox4x32-10 known answers, the same words on every path and device, and normals.

The reference for the words is Random123's published known-answer vectors (``kat_vectors``,
D. E. Shaw Research; Salmon et al., SC 2011) and a scalar Philox4x32-10 written here from the
paper, checked against those vectors. numpy's ``Philox`` is the 4x64 variant and cannot serve.
"""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import stats

from certframe.core import philox, philox_cpu
from certframe.core.sampler import NOISE_STREAM, gaussian_noise
from certframe.interfaces import NoiseKey

CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
DEVICES = ["cpu", pytest.param("cuda", marks=CUDA)]

# Random123 tests/kat_vectors, philox4x32 10: counter words, key words, output words
KAT = [
    ((0x00000000, 0x00000000, 0x00000000, 0x00000000), (0x00000000, 0x00000000),
     (0x6627e8d5, 0xe169c58d, 0xbc57ac4c, 0x9b00dbd8)),
    ((0xffffffff, 0xffffffff, 0xffffffff, 0xffffffff), (0xffffffff, 0xffffffff),
     (0x408f276d, 0x41c83b0e, 0xa20bc7c6, 0x6d5451fd)),
    ((0x243f6a88, 0x85a308d3, 0x13198a2e, 0x03707344), (0xa4093822, 0x299f31d0),
     (0xd16cfe09, 0x94fdcceb, 0x5001e420, 0x24126ea1)),
]


def scalar_philox(counter, key, rounds=10):
    """Philox4x32 on Python ints, straight from the paper (the independent reference)."""
    c0, c1, c2, c3 = counter
    k0, k1 = key
    for _ in range(rounds):
        p0, p1 = 0xD2511F53 * c0, 0xCD9E8D57 * c2
        c0, c1, c2, c3 = (p1 >> 32) ^ c1 ^ k0, p1 & 0xFFFFFFFF, (p0 >> 32) ^ c3 ^ k1, p0 & 0xFFFFFFFF
        k0, k1 = (k0 + 0x9E3779B9) & 0xFFFFFFFF, (k1 + 0xBB67AE85) & 0xFFFFFFFF
    return c0, c1, c2, c3


@pytest.mark.parametrize("counter,key,expected", KAT)
def test_the_scalar_reference_reproduces_random123s_known_answers(counter, key, expected):
    assert scalar_philox(counter, key) == expected


@pytest.mark.parametrize("device", DEVICES)
def test_torch_philox_reproduces_random123s_known_answers(device):
    cols = [torch.tensor([kat[0][i] for kat in KAT], dtype=torch.int64, device=device) for i in range(4)]
    out = philox.philox4x32(*cols, 0, 0)      # key 0 for all: check the first vector only here
    assert [int(w[0]) for w in out] == list(KAT[0][2])
    for counter, key, expected in KAT:        # each vector with its own key
        words = philox.philox4x32(*[torch.tensor([c], dtype=torch.int64, device=device) for c in counter], *key)
        assert tuple(int(w) for w in words) == expected


def test_a_broken_round_function_misses_the_known_answers():
    """The control: nine rounds, or a missing key bump, give other words."""
    counter, key, expected = KAT[2]
    assert scalar_philox(counter, key, rounds=9) != expected
    words = philox.philox4x32(*[torch.tensor([c]) for c in counter], *key, rounds=9)
    assert tuple(int(w) for w in words) != expected


def stream_words_reference(key: philox.StreamKey, draw: int, block: int) -> tuple[int, ...]:
    return scalar_philox((block, draw & 0xFFFFFFFF, draw >> 32, key.c3), (key.k0, key.k1))


@pytest.mark.parametrize("device", DEVICES)
def test_stream_words_follow_the_counter_layout(device):
    """Draw i, block j of stream (k0, k1, c3) is Philox of counter (j, i mod 2**32, i >> 32, c3)."""
    key = philox.stream_key(3, "img-7", "estimation")
    for draw in (0, 1, 2 ** 32 + 5, 2 ** 63 - 1):
        numel = 4 * 6                                          # 6 blocks, planar: value m = word m // 6 of block m % 6
        got = philox.words(key, draw, 1, numel, device=device)[0].cpu().view(4, 6)
        for block in (0, 3, 5):
            assert tuple(int(w) for w in got[:, block]) == stream_words_reference(key, draw, block)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("count,numel", [(1, 7), (3, 4 * 1000), (5, 65536 + 3)])
def test_the_compiled_cpu_loop_gives_the_same_values_as_torch(monkeypatch, dtype, count, numel):
    """numba's loop and the torch operations make bit-identical uniforms, hence identical normals."""
    if not philox_cpu.AVAILABLE:
        pytest.skip("numba is not installed: only the torch path exists")
    key = philox.stream_key(0, "a", "p")
    fast = philox.normal(key, 11, count, numel, dtype=dtype)
    monkeypatch.setattr(philox_cpu, "AVAILABLE", False)
    slow = philox.normal(key, 11, count, numel, dtype=dtype)
    assert fast.dtype == dtype and torch.equal(fast, slow)


# golden values of the stream (pinned: a change here is a new STREAM_VERSION)
GOLDEN_KEY = (0, "golden", "estimation")
GOLDEN_WORDS = {0: (0x4DD42911, 0x936097F9, 0x11479793, 0x189B61BB),
                12345: (0x26D0D803, 0xB52DB993, 0x208607DA, 0x56FAE6F4)}
GOLDEN_NORMALS = [-1.37190092, -0.37841198, -0.70655560, 1.08105803, 1.91117275, 0.65233332]


def test_golden_words_and_normals_of_the_stream():
    assert NOISE_STREAM == "philox4x32-10/box-muller/1"
    key = philox.stream_key(*GOLDEN_KEY)
    for draw, expected in GOLDEN_WORDS.items():
        assert tuple(int(w) for w in philox.words(key, draw, 1, 4)[0]) == expected
        assert stream_words_reference(key, draw, 0) == expected
    z = philox.normal(key, 0, 1, 6)[0]
    assert z.tolist() == pytest.approx(GOLDEN_NORMALS, abs=1e-7)


@CUDA
def test_cpu_and_cuda_give_the_same_noise():
    """Bit-identical words; normals equal to rounding (the devices' log / cos / sin differ in the last ulp)."""
    key = philox.stream_key(*GOLDEN_KEY)
    assert torch.equal(philox.words(key, 5, 3, 1001), philox.words(key, 5, 3, 1001, device="cuda").cpu())
    for dtype in (torch.float32, torch.float64):
        cpu = gaussian_noise((3, 64, 64), 0.5, key=NoiseKey(0, "img"), phase="estimation", start=7, count=9,
                             device="cpu", dtype=dtype)
        gpu = gaussian_noise((3, 64, 64), 0.5, key=NoiseKey(0, "img"), phase="estimation", start=7, count=9,
                             device="cuda", dtype=dtype)
        assert gpu.device.type == "cuda" and gpu.dtype == dtype
        torch.testing.assert_close(gpu.cpu(), cpu, rtol=0, atol=1e-5 if dtype == torch.float32 else 1e-12)
    z = philox.normal(key, 0, 1, 6, device="cuda")[0].cpu()
    assert z.tolist() == pytest.approx(GOLDEN_NORMALS, abs=1e-6)


def test_normals_have_mean_0_variance_1_and_no_correlation():
    """10^6 normals of one draw, and 2,000 draws of 500: moments, lag and cross-draw correlation.

    Bounds are 5 standard errors: a correct generator fails one with probability below 1e-5.
    """
    key = philox.stream_key(1, "stats", "p")
    z = philox.normal(key, 0, 1, 1_000_000, dtype=torch.float64)[0]
    n = z.numel()
    assert abs(float(z.mean())) < 5 / math.sqrt(n)
    assert abs(float(z.var()) - 1) < 5 * math.sqrt(2 / n)
    assert abs(float((z ** 4).mean()) - 3) < 5 * math.sqrt(96 / n)      # kurtosis: Var(z^4) = 96
    for lag in (1, 2, n // 4, n // 2):        # n // 4: the two values of one Box-Muller pair; planes
        r = float((z[:-lag] * z[lag:]).mean())
        assert abs(r) < 5 / math.sqrt(n - lag), lag
    draws = philox.normal(key, 10, 2000, 500, dtype=torch.float64)
    r = (draws[:-1] * draws[1:]).mean()       # neighbouring draws
    assert abs(float(r)) < 5 / math.sqrt(1999 * 500)


def ks_rejections(sample_normals, trials=1000, size=1000, level=0.01):
    """How many of ``trials`` independent streams a KS test against N(0, 1) rejects at ``level``."""
    rejected = 0
    for t in range(trials):
        z = sample_normals(philox.stream_key(2, f"trial-{t}", "ks"), size)
        rejected += stats.kstest(z.numpy(), "norm").pvalue < level
    return rejected


def test_1000_independent_streams_are_normal_at_the_stated_level():
    """1,000 streams x 1,000 normals, KS at level 0.01: rejections ~ Binomial(1000, 0.01) (mean 10);
    P(> 25) < 1e-5 for a correct generator."""
    rejected = ks_rejections(lambda key, size: philox.normal(key, 0, 1, size, dtype=torch.float64)[0])
    assert rejected <= 25


def test_the_ks_check_fires_on_a_broken_box_muller():
    """The control: Box-Muller with u reused as v (a classic slip) is not normal, and the check says so."""
    def broken(key, size):
        u = philox.uniform_blocks(key, 0, 1, 0, -(-size // 4), dtype=torch.float64)
        u[:, 1], u[:, 3] = u[:, 0], u[:, 2]
        return philox.box_muller(u).reshape(-1)[:size]
    assert ks_rejections(broken, trials=50) > 25


def test_integers_uniforms_and_permutations():
    key = philox.stream_key(0, "ints", "p")
    ints = philox.integers(key, 0, 4, 10_000, high=7)
    assert ints.dtype == torch.int64 and int(ints.min()) == 0 and int(ints.max()) == 6
    freq = torch.bincount(ints.reshape(-1), minlength=7).double() / ints.numel()
    assert (freq - 1 / 7).abs().max() < 5 * math.sqrt((1 / 7) * (6 / 7) / ints.numel())
    u = philox.uniform(key, 3, 2, 1000)
    assert u.dtype == torch.float32 and 0 <= float(u.min()) and float(u.max()) < 1
    p = philox.permutation(key, 9, 1000)
    assert torch.equal(torch.sort(p).values, torch.arange(1000))
    assert not torch.equal(p, philox.permutation(key, 10, 1000))
    with pytest.raises(ValueError, match=r"high must lie in \[1, 2\*\*31\)"):
        philox.integers(key, 0, 1, 4, high=0)


def test_draw_and_block_ranges_are_checked():
    key = philox.stream_key(0, "a", "p")
    with pytest.raises(ValueError, match=r"draw indices must lie in \[0, 2\*\*63\)"):
        philox.normal(key, -1, 1, 4)
    with pytest.raises(ValueError, match=r"at most 2\*\*32 blocks"):
        philox.uniform_blocks(key, 0, 1, 2 ** 32, 1)


def test_a_draw_of_n_values_has_no_repeated_block():
    """Distinct counters give distinct blocks (Philox is a bijection for a fixed key): 4 x 10^5 words."""
    w = philox.words(philox.stream_key(0, "a", "p"), 0, 1, 400_000)[0].view(4, -1).T
    packed = w[:, 0] * 2 ** 32 + w[:, 1]      # 64 bits of each block
    assert len(np.unique(packed.numpy())) == w.shape[0]


def test_a_run_from_another_noise_stream_is_not_resumed(tmp_path):
    """The manifest records the stream; --resume of a run drawn from another stream says so."""
    import json

    from click.testing import CliRunner

    from certframe.cli import main

    run = tmp_path / "run"
    args = ["certify", "--dataset-option", "count=2", "--dataset-option", "size=32", "--segmenter-option",
            "weights=synthetic-lung", "--n0", "2", "-n", "8", "--device", "cpu", "--quiet", "--output", str(run)]
    assert CliRunner().invoke(main, args).exit_code == 0
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["config"]["noise_stream"] == NOISE_STREAM
    manifest["config"]["noise_stream"] = "numpy-philox4x64"        # as an older certframe would have drawn
    (run / "manifest.json").write_text(json.dumps(manifest))
    resumed = CliRunner().invoke(main, args + ["--resume"])
    assert resumed.exit_code != 0
    assert "noise_stream: 'numpy-philox4x64' in the run, 'philox4x32-10/box-muller/1' now" in resumed.output
