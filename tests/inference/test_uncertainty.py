"""Uncertainty maps and scores on constructed probability fields with known answers."""

from __future__ import annotations

import math

import pytest
import torch

from medseg.inference.uncertainty import (
    UncertaintyAccumulator,
    label_scores,
    mutual_information,
    normalised_entropy,
    series_score,
)


def _one_hot(labels: torch.Tensor, c: int, confidence: float = 1.0) -> torch.Tensor:
    """(C, ...) probabilities: `confidence` on the label's channel, the rest shared by the others."""
    p = torch.nn.functional.one_hot(labels.long(), c).movedim(-1, 0).float()
    return p * confidence + (1 - p) * (1 - confidence) / (c - 1)


def test_entropy_is_zero_for_one_hot_and_one_for_uniform():
    labels = torch.randint(0, 4, (6, 5, 7), generator=torch.Generator().manual_seed(0))
    assert torch.equal(normalised_entropy(_one_hot(labels, 4)), torch.zeros(6, 5, 7))
    uniform = torch.full((4, 6, 5, 7), 0.25)
    torch.testing.assert_close(normalised_entropy(uniform), torch.ones(6, 5, 7))
    two = torch.tensor([[0.5, 0.9], [0.5, 0.1]])
    h = normalised_entropy(two)
    assert h[0] == pytest.approx(1.0) and h[1] == pytest.approx(-(0.9 * math.log(0.9) + 0.1 * math.log(0.1)) / math.log(2))
    with pytest.raises(ValueError, match="2 classes"):
        normalised_entropy(torch.ones(1, 3, 3, 3))


def _members(shape=(24, 24, 24)):
    """Two members that agree (confidently: background, label 1) everywhere but a cube where one
    says label 1 and the other label 2; and a cube where both are unsure between 0 and 1 alike."""
    x = torch.zeros(shape, dtype=torch.long)
    x[2:10, 2:10, 2:10] = 1
    a, b = x.clone(), x.clone()
    a[14:20, 14:20, 14:20] = 1
    b[14:20, 14:20, 14:20] = 2
    pa, pb = _one_hot(a, 3, 0.96), _one_hot(b, 3, 0.96)
    for p in (pa, pb):  # the same 55/45 doubt in both members
        p[:, 2:6, 16:22, 2:8] = torch.tensor([0.55, 0.45, 0.0])[:, None, None, None]
    return pa, pb


def test_mutual_information_is_high_where_members_disagree_and_zero_where_they_agree():
    pa, pb = _members()
    acc = UncertaintyAccumulator()
    acc.add(pa)
    acc.add(pb)
    mi = acc.mutual_information()
    disagree = mi[14:20, 14:20, 14:20]
    doubt = mi[2:6, 16:22, 2:8]
    # members confident in different classes: MI = H(mean) - H(member), known in closed form
    mean = torch.tensor([0.02, 0.49, 0.49])
    member = torch.tensor([0.02, 0.96, 0.02])
    want = float((-(mean * mean.log()).sum() + (member * member.log()).sum()) / math.log(3))
    torch.testing.assert_close(disagree, torch.full_like(disagree, want))
    assert want > 0.5
    outside = mi.clone()
    outside[14:20, 14:20, 14:20] = 0
    assert float(outside.abs().max()) < 1e-6  # agreement (even unsure agreement) → no disagreement
    h = acc.entropy()
    assert float(doubt.max()) < 1e-6 and float(h[2:6, 16:22, 2:8].min()) > 0.6  # unsure, but alike
    torch.testing.assert_close(mutual_information(torch.stack([pa, pb])), mi)
    # identical members: zero, however many
    same = UncertaintyAccumulator()
    for _ in range(4):
        same.add(pa)
    assert float(same.mutual_information().max()) < 1e-6
    torch.testing.assert_close(same.mean(), pa)


def test_accumulator_matches_the_stacked_definitions():
    g = torch.Generator().manual_seed(1)
    members = torch.softmax(torch.randn(5, 4, 6, 7, 8, generator=g) * 3, dim=1)
    acc = UncertaintyAccumulator()
    for p in members:
        acc.add(p)
    torch.testing.assert_close(acc.mean(), members.mean(0))
    torch.testing.assert_close(acc.entropy(), normalised_entropy(members.mean(0)))
    torch.testing.assert_close(acc.expected_entropy(), torch.stack([normalised_entropy(p) for p in members]).mean(0))
    assert float(acc.mutual_information().min()) >= 0.0
    assert bool((acc.mutual_information() <= acc.entropy() + 1e-6).all())
    with pytest.raises(ValueError, match="do not match"):
        acc.add(members[0, :, :3])
    with pytest.raises(ValueError, match="no member"):
        UncertaintyAccumulator().mean()


def test_label_scores_boundary_shell_and_disagreement():
    # a sphere whose probability falls smoothly across its surface: unsure on the boundary only
    n = 40
    zz, yy, xx = torch.meshgrid(*(torch.arange(n, dtype=torch.float32),) * 3, indexing="ij")
    r = ((xx - 14) ** 2 + (yy - 14) ** 2 + (zz - 14) ** 2).sqrt()
    inside = torch.sigmoid((11.0 - r) * 3.0)
    probs = torch.stack([1 - inside, inside, torch.zeros_like(inside)])
    # plus a cube of label 2 (channel 2) on which two members disagree with channel 1
    pa, pb = probs.clone(), probs.clone()
    cube = (slice(30, 38), slice(30, 38), slice(30, 38))
    pa[(slice(None), *cube)] = torch.tensor([0.02, 0.0, 0.98])[:, None, None, None]
    pb[(slice(None), *cube)] = torch.tensor([0.02, 0.48, 0.50])[:, None, None, None]
    acc = UncertaintyAccumulator()
    acc.add(pa)
    acc.add(pb)
    scores = label_scores(acc.mean(), [0, 5, 7], entropy=acc.entropy(), mutual_info=acc.mutual_information())
    assert set(scores) == {5, 7}  # label values, not channels
    assert acc.label_scores([0, 5, 7]) == scores and scores[5].score == scores[5].boundary_entropy
    sphere, cube_s = scores[5], scores[7]
    assert sphere.voxels == int((inside > 0.5).sum()) and cube_s.voxels == 8**3
    assert sphere.boundary_entropy > 1.3 * sphere.mean_entropy > 0  # the inside includes its confident core
    assert float(acc.entropy()[r < 7].max()) < 1e-3 < sphere.mean_entropy
    assert sphere.boundary_voxels > 0
    assert cube_s.mean_mutual_information > 0.1 > sphere.mean_mutual_information
    row = cube_s.as_dict()
    assert set(row) >= {"voxels", "mean_entropy", "boundary_entropy", "mean_mutual_information"}
    # without members: no MI; the series with disagreement ranks first in a review queue
    plain = label_scores(probs, [0, 5, 7])
    assert set(plain) == {5} and plain[5].mean_mutual_information is None
    agree = UncertaintyAccumulator()
    agree.add(pa)
    agree.add(pa)
    agreed = label_scores(agree.mean(), [0, 5, 7], mutual_info=agree.mutual_information())
    assert agreed[7].mean_mutual_information < 1e-6
    confident = label_scores(_one_hot((inside > 0.5).long(), 3), [0, 5, 7])
    assert series_score(scores) > series_score(agreed) > series_score(confident) == 0.0
    with pytest.raises(ValueError, match="channel values"):
        label_scores(probs, [0, 5])


@pytest.mark.parametrize("r", [1, 2, 3])
def test_boundary_shell_equals_the_cube_dilation_minus_erosion(r):
    """`_shell` (SciPy's separable min/max filters) against the definition written with a full
    cubic `max_pool3d`, on random blobs that touch the volume's edges (no boundary there)."""
    import torch.nn.functional as F

    from medseg.inference.uncertainty import _shell

    g = torch.Generator().manual_seed(r)
    mask = F.avg_pool3d(torch.rand(1, 1, 23, 17, 12, generator=g), 5, stride=1, padding=2)[0, 0] > 0.5
    mask[:, :, 0] = True  # a face on the volume's edge
    assert 0 < int(mask.sum()) < mask.numel()
    m, k = mask[None, None].float(), 2 * r + 1
    dilated = F.max_pool3d(m, k, stride=1, padding=r) > 0
    eroded = -F.max_pool3d(-m, k, stride=1, padding=r) > 0  # padded with -inf: the edge is no boundary
    expected = (dilated & ~eroded)[0, 0]
    got = _shell(mask, r)
    assert got.dtype == torch.bool and torch.equal(got, expected)


def test_label_scores_argmax_is_the_first_maximum():
    """Ties go to the lower channel, as `argmax` (and the label map) does."""
    probs = torch.tensor([0.4, 0.4, 0.2])[:, None, None, None].expand(3, 4, 4, 4).clone()
    probs[:, 0, 0, 0] = torch.tensor([0.2, 0.4, 0.4])
    scores = label_scores(probs, [0, 1, 2])
    assert set(scores) == {1} and scores[1].voxels == 1
