import hashlib

import pytest
import torch
from conftest import ThresholdSegmenter

from certframe.core.philox import stream_key
from certframe.core.sampler import NoiseVoter, accumulate_votes, check_totals, gaussian_noise, noise_stream
from certframe.interfaces import NoiseKey, class_labels


def labels_of(model):
    return lambda noisy: model(noisy).argmax(1)


def make_voter(x, batch_size, seed=0, image_id="img"):
    return NoiseVoter(labels_of(ThresholdSegmenter()), x, key=NoiseKey(seed, image_id), sigma=0.5,
                      num_classes=2, batch_size=batch_size)


@pytest.fixture
def image():
    return torch.rand(1, 12, 10, generator=torch.Generator().manual_seed(3))


def test_same_seed_same_counts_for_any_batch_size(image):
    ref = make_voter(image, 1).counts("estimation", 37)
    for b in (2, 5, 16, 37, 100):
        assert torch.equal(make_voter(image, b).counts("estimation", 37), ref)


def test_counts_sum_to_number_of_draws(image):
    v = make_voter(image, 8)
    assert (v.counts("selection", 10).sum(0) == 10).all()
    assert (v.counts("estimation", 100).sum(0) == 100).all()
    assert v.draws_used == 110 and v.forward_passes == 2 + 13


def test_draws_depend_on_seed_id_phase_and_offset(image):
    base = make_voter(image, 8).counts("estimation", 50)
    assert not torch.equal(make_voter(image, 8, seed=1).counts("estimation", 50), base)
    assert not torch.equal(make_voter(image, 8, image_id="other").counts("estimation", 50), base)
    assert not torch.equal(make_voter(image, 8).counts("selection", 50), base)
    # draws [0, 50) = draws [0, 20) + draws [20, 50)
    v = make_voter(image, 7)
    assert torch.equal(v.counts("estimation", 20) + v.counts("estimation", 30, start=20), base)


def noise(seed=0, image_id="a", phase="p", start=0, count=1, shape=(1, 8, 8), dtype=torch.float32):
    return gaussian_noise(shape, 1.0, key=NoiseKey(seed, image_id), phase=phase, start=start, count=count,
                          device="cpu", dtype=dtype)


def test_noise_is_gaussian_with_sigma():
    drawn = gaussian_noise((1, 64, 64), 0.5, key=NoiseKey(0, "a"), phase="p", start=0, count=20, device="cpu")
    assert drawn.shape == (20, 1, 64, 64) and drawn.dtype == torch.float32
    assert drawn.std().item() == pytest.approx(0.5, rel=0.02)
    assert drawn.mean().item() == pytest.approx(0.0, abs=0.01)
    assert noise(dtype=torch.float64).dtype == torch.float64


def test_torch_cpu_generator_keeps_only_32_bits_of_a_seed():
    """Why the noise is not drawn by seeding torch's CPU generator per draw: seeds that differ only
    above bit 32 give the same numbers, so 63-bit draw seeds collided with probability ~ n^2 / 2^33."""
    gen = torch.Generator()
    a = torch.randn(16, generator=gen.manual_seed(12345))
    for high in (1 << 32, 1 << 40, 1 << 62):
        assert torch.equal(torch.randn(16, generator=gen.manual_seed(12345 + high)), a)


def test_the_stream_keeps_the_full_key_and_draw_index():
    """Counter-based stream: keys that differ only in high bits, and draw indices that differ only
    above bit 32, give different noise (the 32-bit truncation above would make them equal)."""
    base = noise(seed=7)
    for seed in (7 + (1 << 32), 7 + (1 << 40), 7 + (1 << 63)):
        assert not torch.equal(noise(seed=seed), base)
    assert not torch.equal(noise(start=3), noise(start=3 + (1 << 32)))
    assert not torch.equal(noise(start=(1 << 62)), noise(start=(1 << 62) + 1))
    assert not torch.equal(noise(start=(1 << 63) - 1), noise(start=(1 << 63) - 1 - (1 << 32)))
    assert not torch.equal(noise(phase="selection"), noise(phase="estimation"))
    assert not torch.equal(noise(image_id="a"), noise(image_id="b"))
    # the stream's key is 96 bits of blake2b of the JSON list [seed, id, phase]
    key = noise_stream(NoiseKey(0, "a"), "p")
    digest = hashlib.blake2b(b'[0, "a", "p"]', digest_size=12).digest()
    assert (key.k0, key.k1, key.c3) == tuple(int.from_bytes(digest[i:i + 4], "little") for i in (0, 4, 8))
    # the encoding is injective: an id holding a separator cannot mimic another (id, phase)
    assert stream_key(0, "a\x1fb", "c") != stream_key(0, "a", "b\x1fc")
    assert stream_key(0, 'a", "b', "c") != stream_key(0, "a", 'b", "c')
    with pytest.raises(ValueError, match=r"draw indices must lie in \[0, 2\*\*63\)"):
        noise(start=1 << 63)


def test_no_two_draws_of_an_image_coincide():
    """10^4 draws of one image (8 values each): all distinct. Under the old per-draw 32-bit seeding
    a collision among 10^4 draws had probability ~0.012; here draws are disjoint counter blocks."""
    drawn = noise(count=10_000, shape=(8,)).numpy()
    assert len({row.tobytes() for row in drawn}) == 10_000


def old_per_draw_seeding(seed, image_id, phase, index, shape=(1, 8, 8)):
    """The earlier stream (kept as the broken control): a 63-bit blake2b seed per draw, given to
    torch's CPU generator, which keeps its low 32 bits."""
    digest = hashlib.blake2b(f"{seed}\x1f{image_id}\x1f{phase}\x1f{index}".encode(), digest_size=8).digest()
    gen = torch.Generator().manual_seed(int.from_bytes(digest, "little") & ((1 << 63) - 1))
    return torch.randn(shape, generator=gen)


def test_two_draws_that_collided_under_the_old_seeding_now_differ():
    """Draws 7288 and 7882 of image "img" (seed 0, estimation): their old 63-bit seeds agree in the
    low 32 bits, so the old scheme gave them identical noise (an n = 10^4 run drew both). The
    counter-based stream gives them different noise."""
    assert torch.equal(old_per_draw_seeding(0, "img", "estimation", 7288),
                       old_per_draw_seeding(0, "img", "estimation", 7882))
    a = noise(image_id="img", phase="estimation", start=7288)
    b = noise(image_id="img", phase="estimation", start=7882)
    assert not torch.equal(a, b)


def test_noise_draw_i_is_the_same_in_any_batch():
    whole = noise(start=5, count=12)
    parts = torch.cat([noise(start=5, count=7), noise(start=12, count=5)])
    assert torch.equal(whole, parts)
    assert torch.equal(noise(start=9), whole[4:5])


def test_noise_key_is_required_and_validated():
    with pytest.raises(TypeError, match="key"):
        NoiseVoter(labels_of(ThresholdSegmenter()), torch.rand(1, 4, 4), sigma=0.5, num_classes=2)
    with pytest.raises(TypeError, match="NoiseKey"):
        NoiseVoter(labels_of(ThresholdSegmenter()), torch.rand(1, 4, 4), key=(0, "a"), sigma=0.5,
                   num_classes=2)
    with pytest.raises(ValueError, match=r"image_id must be a non-empty string \(the image's id\), got ''"):
        NoiseKey(0, "")
    with pytest.raises(ValueError, match=r"seed must be an int in \[0, 2\*\*64\), got -1"):
        NoiseKey(-1, "a")
    with pytest.raises(ValueError, match="seed must be an int"):
        NoiseKey(True, "a")
    with pytest.raises(ValueError, match="image_id must be a non-empty string"):
        NoiseKey(0, 3)


def test_vote_frequencies_match_closed_form():
    # one pixel at x = 0.5 + sigma: P(class 1) = Phi(1) = 0.8413
    x = torch.full((1, 1, 1), 0.5 + 0.5)
    counts = make_voter(x, 256).counts("estimation", 4000)
    assert counts[1, 0, 0].item() / 4000 == pytest.approx(0.8413, abs=0.02)


def test_accumulate_votes_exact():
    counts = torch.zeros(3, 2, 2, dtype=torch.int64)
    labels = torch.tensor([[[0, 1], [2, 2]], [[0, 0], [2, 1]]])
    accumulate_votes(counts, labels)
    assert counts.tolist() == [[[2, 1], [0, 0]], [[0, 1], [0, 1]], [[0, 0], [2, 1]]]
    check_totals(counts, 2)
    accumulate_votes(counts, torch.tensor([[[0, 3], [1, 1]]]))
    with pytest.raises(ValueError, match=r"outside 0..2: 1 pixel\(s\) got fewer than 3 valid votes"):
        check_totals(counts, 3)


def test_voter_checks_shapes(image):
    with pytest.raises(ValueError, match=r"one image \[C, H, W\] or one volume \[C, D, H, W\]"):
        make_voter(image[None, None], 4)     # 5-D ([1, C, H, W] is now a volume of depth 1)
    bad = NoiseVoter(lambda z: torch.zeros(z.shape[0], 3, 3, dtype=torch.long), image, key=NoiseKey(0, "i"),
                     sigma=0.5, num_classes=2)
    with pytest.raises(ValueError, match="labels of shape"):
        bad.counts("estimation", 3)
    with pytest.raises(ValueError, match="number of samples must be a positive integer"):
        make_voter(image, 4).counts("estimation", 0)


def test_memory_does_not_hold_label_maps(image):
    """The voter keeps only [K, H, W] counts: the model sees at most batch_size draws at once."""
    seen = []

    def model(noisy):
        seen.append(noisy.shape[0])
        return (noisy[:, 0] > 0.5).long()

    NoiseVoter(model, image, key=NoiseKey(0, "i"), sigma=0.5, num_classes=2, batch_size=16).counts(
        "estimation", 1000)
    assert max(seen) == 16 and sum(seen) == 1000


@pytest.mark.parametrize("spatial", [(5, 7), (3, 5, 7), (2, 3, 5, 7)], ids=["2d", "3d", "4d"])
@pytest.mark.parametrize("num_classes", [2, 3])
def test_class_labels_equal_argmax_with_ties_infinities_and_nan(num_classes, spatial, monkeypatch):
    """The fast label step gives argmax's labels exactly: first maximum, NaN wins, first NaN;
    for images [B, K, H, W], volumes [B, K, D, H, W] and more spatial axes alike."""
    if num_classes == 2:  # two classes take the one-comparison path for any number of spatial axes
        monkeypatch.setattr(torch.Tensor, "max", lambda *a, **k: pytest.fail("the two-class fast path was not taken"))
    gen = torch.Generator().manual_seed(0)
    logits = torch.randint(0, 3, (6, num_classes, *spatial), generator=gen).float()   # many ties
    logits[0, 0, :2] = float("nan")
    logits[1, 1, :2] = float("nan")
    logits[2, :, :2] = float("nan")
    logits[3, 1, :2] = float("inf")
    logits[3, 0, :1] = float("inf")
    logits[4, 0, :3] = -float("inf")
    labels = class_labels(logits)
    assert labels.dtype == torch.int64 and labels.shape == (6, *spatial)
    assert torch.equal(labels, logits.argmax(dim=1))
    # golden: a tie -> 0; larger -> 1; NaN in class 1 only -> 1; NaN in both -> 0; NaN in class 0 -> 0
    nan = float("nan")
    tiny = torch.tensor([[1.0, 1.0, 0.0, nan, nan],
                         [1.0, 2.0, nan, nan, 5.0]]).reshape(1, 2, *[1] * (len(spatial) - 1), 5)
    assert class_labels(tiny).flatten().tolist() == [0, 1, 1, 0, 0]
    assert class_labels(tiny).shape == (1, *[1] * (len(spatial) - 1), 5)


def test_noise_drawn_ahead_gives_the_same_votes_and_survives_a_failing_model(image):
    """CPU voters draw batch i + 1 in a helper thread: same counts as one batch; errors surface."""
    one_batch = make_voter(image, batch_size=64).counts("estimation", 50, start=7)
    ahead = make_voter(image, batch_size=8).counts("estimation", 50, start=7)   # 7 batches, drawn ahead
    assert torch.equal(one_batch, ahead)

    calls = []

    def flaky(noisy):
        calls.append(len(noisy))
        if len(calls) == 2:
            raise RuntimeError("model failed on batch 2")
        return labels_of(ThresholdSegmenter())(noisy)

    voter = NoiseVoter(flaky, image, key=NoiseKey(0, "img"), sigma=0.5, num_classes=2, batch_size=8)
    with pytest.raises(RuntimeError, match="batch 2"):
        voter.counts("estimation", 50, start=7)
    # the voter (and its generator) is usable again and gives the same votes as before
    assert torch.equal(voter.counts("estimation", 50, start=7), one_batch)


def _count_in_child(image, queue):
    queue.put(make_voter(image, batch_size=8).counts("estimation", 50, start=7).tolist())


def test_a_forked_child_can_count_after_its_parent(image):
    """The helper thread does not survive fork: a child forked after its parent drew noise ahead
    (a multiprocessing pool, a forking data loader) must start its own, not wait forever."""
    import multiprocessing

    parent = make_voter(image, batch_size=8).counts("estimation", 50, start=7)   # the thread exists now
    ctx = multiprocessing.get_context("fork")
    queue = ctx.Queue()
    child = ctx.Process(target=_count_in_child, args=(image, queue))
    child.start()
    child.join(60)
    if child.is_alive():
        child.kill()
        pytest.fail("the forked child hung while counting votes")
    assert child.exitcode == 0
    assert queue.get(timeout=10) == parent.tolist()
