import pytest
import torch

from certframe.interfaces import class_labels
from certframe.sampler import NoiseVoter, accumulate_votes, check_totals, draw_seed, gaussian_noise
from conftest import ThresholdSegmenter


def labels_of(model):
    return lambda noisy: model(noisy).argmax(1)


def make_voter(x, batch_size, seed=0, image_id="img"):
    return NoiseVoter(labels_of(ThresholdSegmenter()), x, sigma=0.5, num_classes=2,
                      batch_size=batch_size, seed=seed, image_id=image_id)


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


def test_noise_is_gaussian_with_sigma():
    noise = gaussian_noise((1, 64, 64), 0.5, seed=0, image_id="a", phase="p", start=0, count=20,
                           device="cpu")
    assert noise.shape == (20, 1, 64, 64)
    assert noise.std().item() == pytest.approx(0.5, rel=0.02)
    assert noise.mean().item() == pytest.approx(0.0, abs=0.01)
    assert draw_seed(0, "a", "p", 1) != draw_seed(0, "a", "p", 2)


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
    with pytest.raises(ValueError, match=r"one image \[C, H, W\]"):
        make_voter(image[None], 4)
    bad = NoiseVoter(lambda z: torch.zeros(z.shape[0], 3, 3, dtype=torch.long), image, sigma=0.5,
                     num_classes=2)
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

    NoiseVoter(model, image, sigma=0.5, num_classes=2, batch_size=16).counts("estimation", 1000)
    assert max(seen) == 16 and sum(seen) == 1000


@pytest.mark.parametrize("num_classes", [2, 3])
def test_class_labels_equal_argmax_with_ties_infinities_and_nan(num_classes):
    """The fast label step gives argmax's labels exactly: first maximum, NaN wins, first NaN."""
    gen = torch.Generator().manual_seed(0)
    logits = torch.randint(0, 3, (6, num_classes, 5, 7), generator=gen).float()   # many ties
    logits[0, 0, :2] = float("nan")
    logits[1, 1, :2] = float("nan")
    logits[2, :, :2] = float("nan")
    logits[3, 1, :2] = float("inf")
    logits[3, 0, :1] = float("inf")
    logits[4, 0, :3] = -float("inf")
    labels = class_labels(logits)
    assert labels.dtype == torch.int64 and labels.shape == (6, 5, 7)
    assert torch.equal(labels, logits.argmax(dim=1))
    # golden: a tie -> 0; larger -> 1; NaN in class 1 only -> 1; NaN in both -> 0; NaN in class 0 -> 0
    nan = float("nan")
    tiny = torch.tensor([[1.0, 1.0, 0.0, nan, nan],
                         [1.0, 2.0, nan, nan, 5.0]]).reshape(1, 2, 1, 5)
    assert class_labels(tiny).tolist() == [[[0, 1, 1, 0, 0]]]


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

    voter = NoiseVoter(flaky, image, sigma=0.5, num_classes=2, batch_size=8, seed=0, image_id="img")
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
