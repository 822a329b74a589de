import pytest
import torch

from certframe.core.metrics import (
    EMPTY_DICE,
    abstain_rate,
    certified_accuracy,
    certified_dice,
    confusion,
    dice_per_class,
    mean_dice,
    mean_dice_per_item,
    metric_row,
)
from certframe.interfaces import ABSTAIN

A = ABSTAIN


def t(rows):
    return torch.tensor(rows)


def test_certified_dice_counts_abstain_as_error():
    pred = t([[1, 1], [A, 0]])
    gt = t([[1, 0], [1, 0]])
    assert confusion(pred, gt, 1) == (1, 1, 1)  # TP (0,0); FP (0,1); FN (1,0) abstained
    assert certified_dice(pred, gt, 1) == pytest.approx(2 / 4)
    # background: TP (1,1); FP none; FN (0,1) certified as 1
    assert certified_dice(pred, gt, 0) == pytest.approx(2 / 3)


def test_golden_values():
    gt = t([[0, 1, 1, 0], [0, 1, 1, 0], [0, 0, 0, 0]])
    pred = t([[0, 1, A, 0], [A, 1, 1, 1], [0, 0, 0, 0]])
    # TP = 3, FP = 1 (1,3), FN = 1 (0,2) -> 6 / 8
    assert certified_dice(pred, gt) == pytest.approx(0.75)
    assert abstain_rate(pred) == pytest.approx(2 / 12)
    assert certified_accuracy(pred, gt) == pytest.approx(9 / 12)


def test_empty_mask_convention():
    empty = torch.zeros(3, 3, dtype=torch.long)
    assert EMPTY_DICE == 1.0
    assert certified_dice(empty, empty) == 1.0                 # nothing to find, nothing found
    assert certified_dice(t([[A] * 3] * 3), empty) == 1.0      # all abstain, no foreground
    one = empty.clone()
    one[1, 1] = 1
    assert certified_dice(one, empty) == 0.0                   # false positive on empty truth
    assert certified_dice(empty, one) == 0.0                   # missed the only pixel
    assert certified_dice(t([[A] * 3] * 3), one) == 0.0        # abstained on it


def test_multiclass_per_class_and_mean():
    gt = t([[0, 1, 2], [0, 1, 2]])
    pred = t([[0, 1, 2], [A, 2, 2]])
    per = dice_per_class(pred, gt, 3)
    assert per == {1: pytest.approx(2 / 3), 2: pytest.approx(4 / 5)}
    assert mean_dice(pred, gt, 3) == pytest.approx((2 / 3 + 4 / 5) / 2)
    row = metric_row(pred, gt, ("background", "lungs", "heart"))
    assert row["certified_dice_lungs"] == pytest.approx(2 / 3)
    assert row["certified_dice_heart"] == pytest.approx(0.8)


def test_shape_mismatch_is_an_error():
    with pytest.raises(ValueError, match="differs from target"):
        certified_dice(torch.zeros(2, 2, dtype=torch.long), torch.zeros(3, 2, dtype=torch.long))


def test_metric_row_says_when_the_truth_is_empty():
    """An all-ABSTAIN certificate on an image without foreground scores 1.0 by the empty-mask rule;
    the row says so (empty_truth), so tables can show it beside the metric."""
    empty = torch.zeros(3, 3, dtype=torch.long)
    abstain = t([[A] * 3] * 3)
    assert metric_row(abstain, empty, ("background", "lesion")) == {"certified_dice": 1.0, "empty_truth": True}
    one = empty.clone()
    one[1, 1] = 1
    assert metric_row(abstain, one, ("background", "lesion")) == {"certified_dice": 0.0, "empty_truth": False}
    # K = 3: per class; the heart is absent from the truth, the lungs are not
    gt = t([[0, 1, 1], [0, 1, 0]])
    row = metric_row(t([[0, 1, 1], [A, A, 0]]), gt, ("background", "lungs", "heart"), prefix="clean_")
    assert row == {"clean_dice": pytest.approx((0.8 + 1.0) / 2), "clean_dice_lungs": pytest.approx(0.8),
                   "clean_dice_heart": 1.0, "empty_truth": False, "empty_truth_lungs": False,
                   "empty_truth_heart": True}
    assert metric_row(empty, empty, ("background", "lungs", "heart"))["empty_truth"] is True


def test_mean_dice_per_item_is_mean_dice_of_each_item_exactly():
    """The batched Dice training validates with: the same float64 numbers as mean_dice, image by image,
    including the empty-mask rule (both empty: 1.0; one empty: 0.0), ABSTAIN, K = 3 and K = 1."""
    g = torch.Generator().manual_seed(0)
    pred = torch.randint(-1, 3, (6, 5, 7), generator=g)
    target = torch.randint(0, 3, (6, 5, 7), generator=g)
    pred[0], target[0] = 0, 0          # no foreground in either: EMPTY_DICE per class
    pred[1], target[1] = 0, 1          # truth only: 0
    target[2][target[2] == 2] = 0      # class 2 absent from the truth
    for k in (3, 2, 1):
        got = mean_dice_per_item(pred, target, k)
        assert got.dtype == torch.float64
        assert got.tolist() == [mean_dice(p, y, k) for p, y in zip(pred, target)]
    assert mean_dice_per_item(pred, target, 2)[:2].tolist() == [EMPTY_DICE, 0.0]
    assert mean_dice_per_item(pred, target, 3)[1].item() == 0.5  # lungs missed (0), class 2 empty in both (1)
    with pytest.raises(ValueError, match="differs from target"):
        mean_dice_per_item(pred, target[:, :4], 2)
