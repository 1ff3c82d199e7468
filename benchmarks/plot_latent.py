"""Latent-space plot: patches of the bundled labelled CT embedded by a checkpoint's encoder and by
PCA of their voxels, side by side, coloured by TotalSegmentator organ (medseg.report.latent).

Data: example_ct_sm (122×101×30 at 3 mm, RAS) and its TotalSegmentator labels; patches of
24×24×8 voxels (72×72×24 mm) every 8×8×4 voxels, labelled by their centre voxel: liver, spleen,
kidney, stomach, another labelled structure, or unlabelled body tissue (HU > −500; air patches
are left out). Intensity: the checkpoint's plan (denoising ``hu_linear``; segmentation
``ct_window``, clipped). The encoder: ``model.encoder`` of a resnet_denoiser or ResUNet3D
checkpoint, descriptors = the five levels' global averages (`pooled_encoder_features`).
Also printed: the same k-NN accuracy for the same architecture with random weights (seed 0),
so the plot's separation can be read against "any random convolutional features".

Run:  python benchmarks/plot_latent.py CKPT [--out docs/images/latent_pretrained_encoder.png]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

from medseg import sample_data
from medseg.checkpoint import load_checkpoint
from medseg.models import build_model
from medseg.models.resunet import pooled_encoder_features
from medseg.report.latent import embed_patches, grid_patches, write_latent_plot

CLASSES = {5: "liver", 1: "spleen", 2: "kidney", 6: "stomach", 200: "other labelled structure", 201: "unlabelled body tissue"}


def _load_ras(name: str) -> np.ndarray:
    import nibabel as nib

    return np.asarray(nib.as_closest_canonical(nib.load(str(sample_data.path(name)))).dataobj)


def _network_units(hu: np.ndarray, intensity: dict) -> np.ndarray:
    lo, hi = (intensity["hu_min"], intensity["hu_max"]) if "hu_min" in intensity else (intensity["min"], intensity["max"])
    x = (hu - lo) / (hi - lo)
    return np.clip(x, 0, 1) if intensity["kind"] == "ct_window" else x


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("checkpoint", type=Path)
    ap.add_argument("--out", type=Path, default=Path("latent.png"))
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    ckpt = load_checkpoint(args.checkpoint)
    hu = _load_ras("ct_small").astype(np.float64)
    seg = _load_ras("ct_small_seg").astype(np.int64)
    cls = np.where(np.isin(seg, [5, 1, 6]), seg, 0)
    cls[np.isin(seg, [2, 3])] = 2
    cls[(cls == 0) & (seg > 0)] = 200
    cls[(seg == 0) & (hu > -500)] = 201
    x = _network_units(hu, ckpt.preprocessing["intensity"]).astype(np.float32)
    patches, labels = grid_patches(x, cls, (24, 24, 8), (8, 8, 4), keep=lambda c: c in CLASSES)

    def encoder_of(net: torch.nn.Module):
        net.eval()

        def features(batch: np.ndarray) -> np.ndarray:
            with torch.inference_mode():
                return pooled_encoder_features(net.encoder, torch.from_numpy(batch)).numpy()

        return features

    net = build_model(ckpt.model)
    net.load_state_dict(ckpt.state_dict)
    emb = embed_patches(patches, labels, encoder_of(net))
    torch.manual_seed(0)
    random_emb = embed_patches(patches, labels, encoder_of(build_model(ckpt.model)))
    name = f"{ckpt.model.get('name', 'resunet3d')} encoder ({ckpt.task} checkpoint)"
    write_latent_plot(args.out, emb, CLASSES, encoder_name=name,
                      title=f"example_ct_sm, {len(labels)} patches of 72×72×24 mm, coloured by the TotalSegmentator label at the centre")
    counts = {CLASSES[c]: int((labels == c).sum()) for c in CLASSES}
    print(f"patches: {len(labels)} {counts}")
    print(f"{emb.k}-NN accuracy in 2-D: trained encoder {emb.encoder_knn:.3f}, same encoder with random weights "
          f"{random_emb.encoder_knn:.3f}, PCA of voxels {emb.pca_knn:.3f}; majority class {max(counts.values()) / len(labels):.3f}")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
