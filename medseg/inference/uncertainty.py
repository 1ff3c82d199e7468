"""Voxel and per-label uncertainty from softmax probabilities (and TTA flips / ensemble members).

With ``C`` classes and the members' probabilities ``p_m`` (m = 1..M: TTA flips and/or ensemble
members, all on one grid) and their mean ``p̄ = (1/M) Σ_m p_m`` (what the segmentation's argmax
uses), per voxel:

- **entropy** (total predictive uncertainty), normalised to [0, 1]:
  ``H(p̄) = −Σ_c p̄_c · log p̄_c / log C`` — 0 for a one-hot prediction, 1 for the uniform one;
- **expected entropy** (what each member is unsure of on its own):
  ``E_m[H(p_m)] = (1/M) Σ_m H(p_m)``, same normalisation;
- **mutual information** (member disagreement, BALD's epistemic term):
  ``MI = H(p̄) − E_m[H(p_m)] ≥ 0`` (Jensen: entropy is concave) — 0 when all members give the
  same probabilities, however unsure; at most ``log M / log C`` (members confident in different
  classes). Normalised by ``log C`` like the entropies, so ``0 ≤ MI ≤ H(p̄) ≤ 1``.

Per label (`label_scores`), on the grid of the probabilities, with the predicted label map
``argmax p̄``: the mean entropy (and MI) **inside** the predicted region, and in a **shell**
of ``shell_voxels`` voxels on both sides of its boundary (dilation minus erosion) — where
segmentation errors live; the interior of a large organ is confident whatever its boundary does.
`series_score` sums a series up in one number for a review queue: the mean entropy over all
labels' shells.

`UncertaintyAccumulator` collects this while the members are produced one after another
(keeping only the running sum of probabilities, which the ensemble average needs anyway, and
one running entropy map), so the TTA / ensemble loop feeds it and nothing else changes.

All functions take torch tensors ``(C, X, Y, Z)`` (any float dtype, CPU or GPU) and return
float32 tensors on the same device; entropies are computed slab by slab along the last axis so
the temporary memory stays a fraction of the probabilities'.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

#: Voxels of a (C, X, Y, slab) chunk per entropy pass: bounds the temporary p·log p tensor.
_SLAB_VOXELS = 1 << 22


def _slabs(n: int, plane: int) -> list[tuple[int, int]]:
    step = max(1, _SLAB_VOXELS // max(1, plane))
    return [(z, min(z + step, n)) for z in range(0, n, step)]


def normalised_entropy(probs: Any) -> Any:
    """``H(p) / log C`` per voxel: 0 for one-hot probabilities, 1 for uniform ones.

    Args:
        probs: ``(C, *spatial)`` probabilities summing to 1 over the first axis (C ≥ 2).

    Returns:
        float32 tensor of the spatial shape, values in [0, 1].

    Raises:
        ValueError: fewer than 2 classes.
    """
    import torch

    c = int(probs.shape[0])
    if c < 2:
        raise ValueError(f"entropy needs at least 2 classes, got {c}")
    spatial = tuple(probs.shape[1:])
    out = torch.empty(spatial, dtype=torch.float32, device=probs.device)
    if not spatial:
        p = probs.float()
        return (-torch.special.xlogy(p, p).sum(0) / math.log(c)).clamp_(0.0, 1.0)
    plane = int(math.prod(spatial[:-1])) * c
    for z0, z1 in _slabs(spatial[-1], plane):
        p = probs[..., z0:z1].float()
        out[..., z0:z1] = -torch.special.xlogy(p, p).sum(0)  # xlogy(0, 0) = 0: one-hot gives exactly 0
    return out.div_(math.log(c)).clamp_(0.0, 1.0)


def mutual_information(member_probs: Any) -> Any:
    """Member disagreement ``H(p̄) − mean_m H(p_m)``, normalised by ``log C``.

    Args:
        member_probs: ``(M, C, *spatial)``: each member's (TTA flip's, ensemble model's)
            probabilities on one grid.

    Returns:
        float32 tensor of the spatial shape, ≥ 0 (0 where all members agree).
    """
    acc = UncertaintyAccumulator()
    for p in member_probs:
        acc.add(p)
    return acc.mutual_information()


@dataclass
class UncertaintyAccumulator:
    """Running mean probabilities and entropies of members fed one at a time.

    Example (the TTA / ensemble loop)::

        acc = UncertaintyAccumulator()
        for flip in flips:
            acc.add(probabilities_of(flip))      # (C, X, Y, Z) on the common grid
        probs = acc.mean()                        # the ensemble average
        entropy, mi = acc.entropy(), acc.mutual_information()
        scores = label_scores(probs, channel_values, entropy=entropy, mutual_info=mi)

    Memory: one ``(C, X, Y, Z)`` sum and one ``(X, Y, Z)`` float32 map, whatever M.
    """

    count: int = 0
    _sum: Any = field(default=None, repr=False)
    _entropy_sum: Any = field(default=None, repr=False)

    def add(self, probs: Any, weight: float = 1.0) -> None:
        """Add one member's probabilities ``(C, *spatial)`` (not modified; summed in float32)."""
        import torch

        p = probs.detach() if hasattr(probs, "detach") else torch.as_tensor(probs)
        if self._sum is not None and tuple(p.shape) != tuple(self._sum.shape):
            raise ValueError(f"member probabilities of shape {tuple(p.shape)} do not match the first member's {tuple(self._sum.shape)}")
        h = normalised_entropy(p)
        if self._sum is None:
            self._sum = p.float().clone()
            self._entropy_sum = h
        else:
            self._sum.add_(p.float())
            self._entropy_sum.add_(h)
        self.count += 1

    def _check(self) -> None:
        if self.count == 0:
            raise ValueError("no member probabilities were added")

    def mean(self) -> Any:
        """The members' mean probabilities ``p̄`` ``(C, *spatial)``, float32."""
        self._check()
        return self._sum / self.count

    def entropy(self) -> Any:
        """``H(p̄) / log C`` (total uncertainty), in [0, 1]."""
        return normalised_entropy(self.mean())

    def expected_entropy(self) -> Any:
        """``mean_m H(p_m) / log C`` (the members' own uncertainty), in [0, 1]."""
        self._check()
        return self._entropy_sum / self.count

    def mutual_information(self) -> Any:
        """``(H(p̄) − mean_m H(p_m)) / log C`` (disagreement), ≥ 0; all zeros for one member."""
        return (self.entropy() - self.expected_entropy()).clamp_(min=0.0)

    def label_scores(self, channel_values: list[int], *, shell_voxels: int = 2) -> dict[int, LabelUncertainty]:
        """`label_scores` of the mean probabilities, with mutual information when there are
        several members."""
        mean = self.mean()
        return label_scores(
            mean,
            channel_values,
            entropy=normalised_entropy(mean),
            mutual_info=self.mutual_information() if self.count > 1 else None,
            shell_voxels=shell_voxels,
        )


@dataclass(frozen=True)
class LabelUncertainty:
    """Uncertainty of one predicted label (normalised entropies, 0 = certain, 1 = uniform).

    Attributes:
        voxels: voxels predicted as this label (on the probabilities' grid).
        boundary_voxels: voxels of the shell around its boundary.
        mean_entropy: mean entropy inside the predicted region.
        boundary_entropy: mean entropy in the shell around the region's boundary.
        mean_mutual_information, boundary_mutual_information: the same for member
            disagreement; None without members.
    """

    voxels: int
    boundary_voxels: int
    mean_entropy: float
    boundary_entropy: float
    mean_mutual_information: float | None = None
    boundary_mutual_information: float | None = None

    @property
    def score(self) -> float:
        """The one number per label for manifests and review queues: `boundary_entropy`."""
        return self.boundary_entropy

    def as_dict(self) -> dict[str, Any]:
        """Plain dict for manifests / CSV rows."""
        return {
            "voxels": self.voxels,
            "boundary_voxels": self.boundary_voxels,
            "mean_entropy": self.mean_entropy,
            "boundary_entropy": self.boundary_entropy,
            "mean_mutual_information": self.mean_mutual_information,
            "boundary_mutual_information": self.boundary_mutual_information,
        }


def _shell(mask: Any, r: int) -> Any:
    """Voxels within `r` voxels of the mask's boundary, inside or outside (cubic neighbourhood).

    SciPy's min/max filters on the boolean mask: a cubic footprint given as ``size`` runs as
    three 1-D passes on bytes, where a float `max_pool3d` compares the whole cube per voxel
    (same voxels; the figures are in docs/benchmarks.md).
    """
    import numpy as np
    import torch
    from scipy import ndimage

    m = np.asarray(mask.cpu().numpy(), dtype=bool)
    k = 2 * r + 1
    dilated = ndimage.maximum_filter(m, size=k, mode="constant", cval=False)
    # "nearest" repeats the edge voxels, which are in every window that reaches past the edge
    # anyway: the volume's edge is no boundary
    eroded = ndimage.minimum_filter(m, size=k, mode="nearest")
    return torch.from_numpy(dilated & ~eroded).to(mask.device)


def label_scores(
    probs: Any,
    channel_values: list[int],
    *,
    entropy: Any = None,
    mutual_info: Any = None,
    shell_voxels: int = 2,
) -> dict[int, LabelUncertainty]:
    """Per-label uncertainty of the segmentation ``argmax(probs)``.

    Args:
        probs: ``(C, X, Y, Z)`` mean probabilities (``UncertaintyAccumulator.mean()`` or the
            runner's averaged softmax), on the network grid.
        channel_values: label value of each channel (background 0 first), as
            ``LoadedModel.channel_values``.
        entropy: the normalised entropy map of `probs` if already computed.
        mutual_info: the normalised mutual-information map (with TTA / ensemble members).
        shell_voxels: half-width of the boundary shell in voxels (of the probabilities' grid).

    Returns:
        label value → `LabelUncertainty`, for every label predicted somewhere (background
        excluded).

    Raises:
        ValueError: `channel_values` does not have one entry per channel.
    """
    import numpy as np
    import torch
    from scipy import ndimage

    if len(channel_values) != int(probs.shape[0]):
        raise ValueError(f"{len(channel_values)} channel values for {int(probs.shape[0])} probability channels")
    if entropy is None:
        entropy = normalised_entropy(probs)
    # `max(0).indices` is `argmax(0)` (the first maximum too) through torch's max kernel, which
    # reduces the leading channel axis far faster on CPU (docs/benchmarks.md)
    predicted = torch.max(probs, 0).indices
    channels = predicted.to(torch.int32).cpu().numpy()
    r = int(shell_voxels)
    shape = channels.shape
    out: dict[int, LabelUncertainty] = {}
    for n, box in enumerate(ndimage.find_objects(channels), start=1):
        if box is None or n >= len(channel_values):
            continue
        grown = tuple(slice(max(s.start - r - 1, 0), min(s.stop + r + 1, size)) for s, size in zip(box, shape))
        mask = torch.from_numpy(np.ascontiguousarray(channels[grown] == n)).to(entropy.device)
        shell = _shell(mask, r) if r > 0 else mask
        if not bool(shell.any()):  # a label filling its whole box up to the volume's edges
            shell = mask
        h = entropy[grown]
        mi = mutual_info[grown] if mutual_info is not None else None
        out[int(channel_values[n])] = LabelUncertainty(
            voxels=int(mask.sum()),
            boundary_voxels=int(shell.sum()),
            mean_entropy=float(h[mask].mean()),
            boundary_entropy=float(h[shell].mean()),
            mean_mutual_information=None if mi is None else float(mi[mask].mean()),
            boundary_mutual_information=None if mi is None else float(mi[shell].mean()),
        )
    return out


def series_score(scores: dict[int, LabelUncertainty]) -> float:
    """One number per series for a review queue: the labels' boundary entropies averaged with
    their shells' voxel counts as weights (the mean entropy over all shells), 0 when nothing
    was predicted. Higher = review first."""
    total = sum(s.boundary_voxels for s in scores.values())
    if total == 0:
        return 0.0
    return float(sum(s.boundary_voxels * s.boundary_entropy for s in scores.values()) / total)
