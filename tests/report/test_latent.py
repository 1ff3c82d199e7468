"""The latent-space report on the bundled labelled CT: patches, the two embeddings, k-NN accuracy, the PNG."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from medseg import sample_data
from medseg.io import read_volume
from medseg.report.latent import embed_patches, grid_patches, knn_accuracy, pca_2d, write_latent_plot


def test_pca_and_knn_on_known_geometry():
    rng = np.random.default_rng(0)
    t = rng.normal(size=200)
    line = np.stack([t, 2 * t, -t], axis=1) + rng.normal(scale=1e-3, size=(200, 3))
    xy = pca_2d(line)
    assert np.abs(xy[:, 0]).std() > 100 * np.abs(xy[:, 1]).std()  # one direction holds (almost) all variance
    np.testing.assert_allclose(pca_2d(line), xy)  # deterministic, sign included
    blobs = np.concatenate([rng.normal(0, 0.1, (50, 2)), rng.normal(5, 0.1, (50, 2))])
    labels = np.repeat([1, 2], 50)
    assert knn_accuracy(blobs, labels) == 1.0
    assert knn_accuracy(blobs, rng.permutation(labels)) < 0.75  # shuffled labels: about chance


def test_latent_plot_of_real_ct_patches_with_an_encoder(tmp_path):
    from medseg.models import build_model
    from medseg.models.resunet import pooled_encoder_features

    vol = read_volume(sample_data.path("ct_small")).array.astype(np.float32)
    seg = read_volume(sample_data.path("ct_small_seg")).array.astype(np.int64)
    cls = np.where(seg == 5, 5, np.where(seg > 0, 200, np.where(vol > -500, 201, 0)))
    x = (vol + 200) / 500
    patches, labels = grid_patches(x, cls, (24, 24, 8), (16, 16, 8), keep=lambda c: c != 0)
    assert patches.shape[1:] == (24, 24, 8) and len(patches) == len(labels) > 20
    assert set(labels) <= {5, 200, 201} and 5 in labels and 201 in labels
    torch.manual_seed(0)
    net = build_model({"name": "resnet_denoiser", "spatial_dims": 3, "encoder": "resnet10", "encoder_channels": [8, 16, 32, 64],
                       "stem_stride": [2, 2, 1]}).eval()

    def features(batch):
        with torch.inference_mode():
            return pooled_encoder_features(net.encoder, torch.from_numpy(batch)).numpy()

    emb = embed_patches(patches, labels, features)
    assert emb.encoder_xy.shape == emb.pca_xy.shape == (len(labels), 2)
    # liver vs other organs vs unlabelled tissue is visible in the voxels' own PCA: better than always
    # answering the most frequent class
    majority = np.bincount(labels).max() / len(labels)
    assert emb.pca_knn > majority
    assert 0 <= emb.encoder_knn <= 1
    out = write_latent_plot(tmp_path / "latent.png", emb, {5: "liver", 200: "other structure", 201: "body"}, title="test")
    from PIL import Image

    with Image.open(out) as im:
        assert im.size[0] > 600 and im.size[1] > 300


def test_grid_patches_rejects_mismatched_inputs():
    with pytest.raises(ValueError, match="differ in shape"):
        grid_patches(np.zeros((8, 8, 8)), np.zeros((8, 8, 4), int), (4, 4, 4), (4, 4, 4))
    with pytest.raises(ValueError, match="does not fit"):
        grid_patches(np.zeros((8, 8, 8)), np.zeros((8, 8, 8), int), (16, 4, 4), (4, 4, 4))
