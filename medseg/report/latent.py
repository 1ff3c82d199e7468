"""Latent-space report: image patches embedded by a network's encoder and by PCA of their voxels,
side by side, coloured by the tissue / organ label at each patch's centre.

`grid_patches` cuts a volume (network units) into patches on a regular grid and labels each by
its centre voxel; `embed_patches` gives two 2-D embeddings of them — the encoder's descriptors
(any callable ``(B, 1, X, Y, Z) → (B, D)``, e.g. `medseg.models.resunet.pooled_encoder_features`)
projected by PCA, and PCA of the raw voxels — and a leave-one-out k-nearest-neighbour accuracy
of the label in each 2-D embedding (how well the picture separates the tissues, in one number);
`write_latent_plot` draws the PNG.

PCA and k-NN are a few lines of numpy here (SVD; exact leave-one-out neighbours) rather than a
scikit-learn dependency for one report plot; both are deterministic.
"""

from __future__ import annotations

import io
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from medseg.io.atomic import write_bytes_atomic

__all__ = ["LatentEmbedding", "embed_patches", "grid_patches", "knn_accuracy", "pca_2d", "write_latent_plot"]


@dataclass(frozen=True)
class LatentEmbedding:
    """Two 2-D embeddings of the same patches and their labels."""

    encoder_xy: np.ndarray  # (N, 2)
    pca_xy: np.ndarray  # (N, 2)
    labels: np.ndarray  # (N,) class ids
    encoder_knn: float  # leave-one-out k-NN accuracy of the label in encoder_xy
    pca_knn: float  # ... in pca_xy
    k: int


def grid_patches(
    volume: np.ndarray, labels: np.ndarray, patch_size: Sequence[int], stride: Sequence[int], keep: Callable[[int], bool] | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Patches on a regular grid and the label at each centre.

    Args:
        volume: ``(X, Y, Z)`` image (network units).
        labels: ``(X, Y, Z)`` integer class ids on the same grid.
        patch_size, stride: per axis, in voxels.
        keep: optional predicate on the centre label (e.g. drop classes not to show).

    Returns:
        ``(patches (N, X, Y, Z) float32, centre labels (N,) int)``.

    Raises:
        ValueError: shapes differ or the patch does not fit in the volume.
    """
    if volume.shape != labels.shape:
        raise ValueError(f"image {volume.shape} and labels {labels.shape} differ in shape")
    ps, st = [int(p) for p in patch_size], [int(s) for s in stride]
    if any(p > s for p, s in zip(ps, volume.shape)):
        raise ValueError(f"patch {ps} does not fit in the volume {volume.shape}")
    starts = [range(0, n - p + 1, s) for n, p, s in zip(volume.shape, ps, st)]
    patches, centre = [], []
    for x in starts[0]:
        for y in starts[1]:
            for z in starts[2]:
                lab = int(labels[x + ps[0] // 2, y + ps[1] // 2, z + ps[2] // 2])
                if keep is not None and not keep(lab):
                    continue
                patches.append(volume[x : x + ps[0], y : y + ps[1], z : z + ps[2]])
                centre.append(lab)
    return np.asarray(patches, dtype=np.float32), np.asarray(centre, dtype=np.int64)


def pca_2d(features: np.ndarray) -> np.ndarray:
    """The first two principal components' scores of ``(N, D)`` features (each feature standardised)."""
    x = np.asarray(features, dtype=np.float64).reshape(len(features), -1)
    x = x - x.mean(axis=0)
    std = x.std(axis=0)
    x = x / np.where(std > 0, std, 1.0)
    u, s, _ = np.linalg.svd(x, full_matrices=False)
    scores = u[:, :2] * s[:2]
    # fixed sign (largest-magnitude loading positive per component): the same picture every run
    signs = np.sign(scores[np.abs(scores).argmax(axis=0), np.arange(scores.shape[1])])
    return scores * np.where(signs == 0, 1.0, signs)


def knn_accuracy(xy: np.ndarray, labels: np.ndarray, k: int = 5) -> float:
    """Leave-one-out k-nearest-neighbour accuracy (majority vote, ties to the nearest) of ``labels`` in ``xy``."""
    xy = np.asarray(xy, dtype=np.float64)
    d = ((xy[:, None, :] - xy[None, :, :]) ** 2).sum(-1)
    np.fill_diagonal(d, np.inf)
    nearest = np.argsort(d, axis=1, kind="stable")[:, :k]
    correct = 0
    for i, idx in enumerate(nearest):
        votes = labels[idx]
        values, counts = np.unique(votes, return_counts=True)
        best = values[counts == counts.max()]
        pred = next(v for v in votes if v in best)  # tie: the nearest of the tied classes
        correct += int(pred == labels[i])
    return correct / len(labels)


def embed_patches(
    patches: np.ndarray, labels: np.ndarray, features: Callable[[np.ndarray], np.ndarray], *, k: int = 5, batch: int = 64
) -> LatentEmbedding:
    """Encoder and voxel-PCA embeddings of ``patches`` (``(N, X, Y, Z)``).

    Args:
        features: ``(B, 1, X, Y, Z)`` float32 array → ``(B, D)`` descriptors (the encoder).
        k: neighbours of the k-NN accuracy.
        batch: patches per ``features`` call.
    """
    descriptors = np.concatenate([np.asarray(features(patches[i : i + batch, None])) for i in range(0, len(patches), batch)])
    enc, pix = pca_2d(descriptors), pca_2d(patches.reshape(len(patches), -1))
    return LatentEmbedding(enc, pix, labels, knn_accuracy(enc, labels, k), knn_accuracy(pix, labels, k), k)


def write_latent_plot(path: str | os.PathLike[str], emb: LatentEmbedding, class_names: Mapping[int, str], *,
                      encoder_name: str = "encoder", title: str | None = None) -> Path:
    """Two scatter plots side by side (encoder | PCA of voxels), one colour per class, one legend.

    Returns:
        The written path (atomic).
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(11, 5.2), dpi=110)
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, 2)
    classes = [c for c in class_names if np.any(emb.labels == c)]
    colours = {c: f"C{i % 10}" for i, c in enumerate(classes)}
    panels = ((axes[0], emb.encoder_xy, f"{encoder_name}: PCA of its pooled features", emb.encoder_knn),
              (axes[1], emb.pca_xy, "PCA of the patch voxels", emb.pca_knn))
    for ax, xy, name, acc in panels:
        for c in classes:
            sel = emb.labels == c
            ax.scatter(xy[sel, 0], xy[sel, 1], s=9, alpha=0.75, color=colours[c], label=f"{class_names[c]} ({sel.sum()})")
        ax.set_title(f"{name}\n{emb.k}-NN accuracy of the label in 2-D: {acc:.2f}", fontsize=9)
        ax.set_xlabel("component 1")
        ax.set_ylabel("component 2")
    axes[1].legend(fontsize=7, loc="best", markerscale=1.5)
    if title:
        fig.suptitle(title, fontsize=10)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", bbox_inches="tight")
    return write_bytes_atomic(path, buf.getvalue())
