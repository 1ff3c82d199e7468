"""Augmentation cost per training sample vs the network's training step (issue 4).

For a workflow (default ``workflows/abdomen_ct_organs.yaml``) this measures, on the real data:

- the one-off cached stage per case (load, RAS, resample, normalise, crop, pad, fg/bg indices);
- each random augmentation alone, applied with probability 1 to one patch (MONAI transforms);
- the workflow's whole random stage (patch sampling + augmentations at their configured
  probabilities) per patch, averaged over many draws;
- one optimiser step of the workflow's network on a batch (forward, DiceFocal loss, backward,
  AdamW step), per patch.

and prints the ratio augmentation / network: below 1 the network is the bottleneck even with
``num_workers: 0``; DataLoader workers then hide augmentation completely on a multi-core machine.

    python benchmarks/bench_training.py [--workflow W.yaml] [--threads 2] [--draws 40]
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]


def _time(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workflow", default=str(ROOT / "workflows" / "abdomen_ct_organs.yaml"))
    parser.add_argument("--threads", type=int, default=2, help="torch threads (the CI box has 2 cores)")
    parser.add_argument("--draws", type=int, default=40, help="random-stage draws to average")
    parser.add_argument("--default-allocator", action="store_true",
                        help="leave glibc's malloc as it is (the `medseg` CLI calls medseg.runtime.keep_freed_memory)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    from medseg.runtime import keep_freed_memory

    print(f"freed memory kept mapped (as the CLI does): {False if args.default_allocator else keep_freed_memory()}")

    from monai.losses import DiceFocalLoss
    from monai.transforms import Compose

    from medseg.config import load_workflow
    from medseg.config.schema import AugmentationConfig
    from medseg.data.transforms import augmentation_transforms, training_transforms
    from medseg.models import build_model

    cfg = load_workflow(args.workflow)
    case = {"image": cfg.data.training[0].image, "label": cfg.data.training[0].label}
    cached, random = training_transforms(cfg)
    t0 = time.perf_counter()
    item = cached(case)
    t_cached = time.perf_counter() - t0

    random.set_random_state(seed=0)
    n_patches = cfg.training.patches_per_case
    t0 = time.perf_counter()
    for _ in range(args.draws):
        patches = random(item)
    t_random_patch = (time.perf_counter() - t0) / (args.draws * n_patches)

    # each augmentation alone, probability 1, on one patch
    crop_only = Compose(random.transforms[:1])
    crop_only.set_random_state(seed=1)
    patch = crop_only(item)[0]
    off = {name: {"prob": 0.0} for name in AugmentationConfig.model_fields}
    single: dict[str, float] = {}
    for name in AugmentationConfig.model_fields:
        settings = getattr(cfg.augmentation, name).model_dump() | {"prob": 1.0}
        if name == "flip":
            settings["axes"] = settings["axes"] or [1]
        aug = AugmentationConfig.model_validate(off | {name: settings})
        chain = Compose(augmentation_transforms(aug))
        chain.set_random_state(seed=2)
        single[name] = _time(lambda: chain(dict(patch)), 10)
    t_crop = _time(lambda: crop_only(item), 10) / n_patches

    # one optimiser step of the workflow's network
    model = build_model(cfg.model.model_dump(mode="json") | {"out_channels": len(cfg.data.labels) + 1})
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    loss_fn = DiceFocalLoss(to_onehot_y=True, softmax=True, include_background=False)
    x = torch.stack([p["image"] for p in patches])
    y = torch.stack([p["label"] for p in patches])

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        loss = loss_fn(model(x), y)
        loss.backward()
        opt.step()

    step()  # oneDNN primitive creation
    t_step = _time(step, 8)

    n_params = sum(p.numel() for p in model.parameters()) / 1e6
    print(f"workflow: {Path(args.workflow).name}; patch {cfg.training.patch_size}, {n_patches} patches/step, "
          f"model {cfg.model.encoder} ({n_params:.1f} M parameters); torch threads {args.threads}")
    print(f"cached stage (once per case, then in memory): {t_cached * 1000:.0f} ms")
    print("\n| augmentation (prob 1, one patch) | ms |\n| --- | ---: |")
    print(f"| patch sampling (RandCropByPosNegLabeld) | {t_crop * 1000:.1f} |")
    for name, t in single.items():
        print(f"| {name} | {t * 1000:.1f} |")
    aug_per_step = t_random_patch * n_patches
    print(f"\nrandom stage as configured: {t_random_patch * 1000:.1f} ms per patch, {aug_per_step * 1000:.0f} ms per step")
    print(f"network step (fwd + loss + bwd + AdamW): {t_step * 1000:.0f} ms per step, {t_step / n_patches * 1000:.0f} ms per patch")
    print(f"ratio augmentation / network step: {aug_per_step / t_step:.2f}")


if __name__ == "__main__":
    main()
