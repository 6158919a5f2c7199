"""Keep masks: class boxes, label shapes, the latent grid rule and seeded pair flips, on hand-built label maps."""

from __future__ import annotations

import pytest
import torch

from common.data.laterality import Orientation, seeded_flips
from common.regions import boxes_to_mask, class_boxes, keep_mask, regenerated_fraction, shape_mask, to_latent_grid


def two_class_label() -> torch.Tensor:
    """8x8 label: class 1 in two components (rows 1-2, cols 1-2 and row 5, col 1), class 3 at rows 4-5, cols 5-6."""
    label = torch.zeros(1, 1, 8, 8, dtype=torch.long)
    label[0, 0, 1:3, 1:3] = 1
    label[0, 0, 5, 1] = 1
    label[0, 0, 4:6, 5:7] = 3
    return label


def test_one_box_per_class_spans_all_its_components():
    assert class_boxes(two_class_label()) == [[(1, 6, 1, 3), (4, 6, 5, 7)]]


def test_box_mask_is_the_union_of_class_boxes():
    expected = torch.zeros(1, 1, 8, 8)
    expected[0, 0, 1:6, 1:3] = 1  # class 1: rows 1..5, cols 1..2 (covers the gap between its components)
    expected[0, 0, 4:6, 5:7] = 1  # class 3
    assert torch.equal(keep_mask(two_class_label(), mode="box"), expected)


def test_box_margin_grows_boxes_and_clips_at_the_border():
    assert class_boxes(two_class_label(), margin=2) == [[(0, 8, 0, 5), (2, 8, 3, 8)]]


def test_unlabelled_image_keeps_nothing_and_batches_are_independent():
    labels = torch.cat([torch.zeros(1, 1, 8, 8, dtype=torch.long), two_class_label()])
    boxes = class_boxes(labels)
    assert boxes[0] == [] and len(boxes[1]) == 2
    mask = boxes_to_mask(boxes, (8, 8))
    assert mask[0].sum() == 0 and mask[1].sum() == 5 * 2 + 2 * 2


def test_shape_mask_is_the_labelled_pixels_and_dilates_by_a_square():
    label = two_class_label()
    assert torch.equal(shape_mask(label), (label > 0).float())
    single = torch.zeros(1, 1, 5, 5, dtype=torch.long)
    single[0, 0, 2, 2] = 2
    dilated = keep_mask(single, mode="shape", margin=1)
    expected = torch.zeros(1, 1, 5, 5)
    expected[0, 0, 1:4, 1:4] = 1
    assert torch.equal(dilated, expected)


def test_latent_grid_any_keeps_a_cell_touched_by_the_box_all_needs_it_covered():
    mask = torch.zeros(1, 1, 8, 8)
    mask[0, 0, 0:4, 0:5] = 1  # covers latent cell (0, 0) fully and touches cell (0, 1) on one column
    assert torch.equal(to_latent_grid(mask, (2, 2)), torch.tensor([[[[1.0, 1.0], [0.0, 0.0]]]]))
    assert torch.equal(to_latent_grid(mask, (2, 2), rule="all"), torch.tensor([[[[1.0, 0.0], [0.0, 0.0]]]]))


def test_latent_grid_of_a_box_mask_contains_the_whole_pixel_mask():
    mask = keep_mask(two_class_label())
    latent = to_latent_grid(mask, (2, 2))
    upsampled = latent.repeat_interleave(4, dim=-2).repeat_interleave(4, dim=-1)
    assert torch.all(upsampled >= mask)


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="mode"):
        keep_mask(two_class_label(), mode="circle")
    with pytest.raises(ValueError, match=r"\(B, 1, H, W\)"):
        class_boxes(torch.zeros(8, 8))
    with pytest.raises(ValueError, match="rule"):
        to_latent_grid(torch.zeros(1, 1, 8, 8), (2, 2), rule="most")


def test_seeded_flips_move_structures_to_mirrored_positions_with_their_masks():
    """AugPaint's flips (sec. 4.4): the whole pair flips, so the labelled structures change place with their masks."""
    label = two_class_label()
    image = torch.rand(1, 1, 8, 8) * 0.1 + label.float()  # image encodes the label: round(image) == label
    both = Orientation(flips=("up_down", "left_right"))  # declared: both flips valid, no lateral pairs
    outcomes = set()
    for seed in range(16):
        flipped_image, flipped_label = seeded_flips(image, label, [seed], both)
        draws = (torch.rand(2, generator=torch.Generator().manual_seed(seed)) < 0.5).tolist()
        dims = [d for d, flip in zip((-2, -1), draws, strict=True) if flip]
        expected = torch.flip(label, dims) if dims else label
        assert torch.equal(flipped_label, expected) and torch.equal(flipped_image.floor().long(), flipped_label)
        outcomes.add(tuple(dims))
        if dims:  # the class boxes moved: structures appear at new positions
            assert class_boxes(flipped_label) != class_boxes(label)
    assert outcomes == {(), (-2,), (-1,), (-2, -1)}
    batch, _ = seeded_flips(image.repeat(3, 1, 1, 1), label.repeat(3, 1, 1, 1), [0, 5, 9], both)
    assert torch.equal(batch[1:2], seeded_flips(image, label, [5], both)[0])  # a pair's flips depend on its seed only


def test_regenerated_fraction_is_what_the_keep_mask_leaves_in_pixels_and_latent_cells():
    label = two_class_label()  # class 1 box rows 1-5 x cols 1-2 (10 px), class 3 box rows 4-5 x cols 5-6 (4 px)
    assert float(regenerated_fraction(label, "box")) == pytest.approx(1 - 14 / 64)
    assert float(regenerated_fraction(label, "shape")) == pytest.approx(1 - 9 / 64)  # 4 + 1 + 4 labelled pixels
    # on a 2x2 latent grid (4x4 pixel cells) a cell touched by a box is kept: only the top-right one is regenerated
    assert float(regenerated_fraction(label, "box", latent_size=(2, 2))) == 0.25
    # 4x4 grid (2x2 pixel cells): class 1's box touches cells rows 0-2 x col 0-1 (6), class 3's rows 2 x cols 2-3 (2)
    assert float(regenerated_fraction(label, "box", latent_size=(4, 4))) == pytest.approx(1 - 8 / 16)
    unlabelled = torch.zeros(1, 1, 8, 8, dtype=torch.long)
    assert regenerated_fraction(torch.cat([label, unlabelled]), "box")[1] == 1.0
