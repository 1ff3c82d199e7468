"""Encoder pretraining benchmark: does the denoising-pretrained encoder help the cross-scan
liver/spleen segmentation? Fine-tuning from it against training from scratch at equal steps,
several seeds, with all and with part of the labelled training data.

Protocol (also in docs/benchmarks.md, "Encoder pretraining"):

- Pretraining: workflows/pretrain_ct_encoder.yaml with its defaults (the ResNet-18 encoder of
  workflows/abdomen_ct_organs.yaml + a light decoder, Gaussian denoising of the unlabelled
  example_ct and example_ct_sm, 3 mm; the held-out DICOM series is not used), or --pretrained.
- Segmentation: workflows/abdomen_ct_organs.yaml restricted to liver and spleen (TotalSegmentator
  values 5 and 1; everything else background), trained on example_ct_sm and validated once, at
  the end, on the 20-slice 512² DICOM series (another, contrast-enhanced scan), largest
  component kept. Both arms use the same seed, steps, schedule and data; the only difference is
  ``model.pretrained`` (all layers train from the start: no freezing).
- Reduced labelled data (``--fractions``): a contiguous block of that fraction of example_ct_sm's
  30 slices around the liver/spleen centre, written as a new NIfTI (image and labels).
- Reported: final-epoch Dice of liver and spleen on the held-out series, mean ± sd over seeds,
  and the per-seed paired difference (fine-tuned − scratch).

Run:  python benchmarks/bench_pretrain.py [--pretrained CKPT] [--seeds 0 1 2] [--fractions 1 0.5]
      [--epochs 6] [--steps 10] [--out DIR]
Re-running continues: finished runs are reused.
"""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

import numpy as np
import yaml

ROOT = Path(__file__).resolve().parents[1]
log = logging.getLogger("bench_pretrain")


def _reduced_case(fraction: float, out: Path) -> tuple[str, str]:
    """example_ct_sm and its labels, or a contiguous slab of ``fraction`` of its slices around liver + spleen."""
    import nibabel as nib

    from medseg import sample_data

    image, label = sample_data.path("ct_small"), sample_data.path("ct_small_seg")
    if fraction >= 1:
        return str(image), str(label)
    img, seg = nib.load(str(image)), nib.load(str(label))
    organs = np.isin(np.asarray(seg.dataobj), (1, 5))
    zs = np.nonzero(organs.any(axis=(0, 1)))[0]
    n = max(1, int(round(fraction * img.shape[2])))
    z0 = int(np.clip(round(zs.mean() - n / 2), 0, img.shape[2] - n))
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for src, name in ((img, "image"), (seg, "label")):
        shifted = src.affine.copy()
        shifted[:3, 3] = src.affine[:3, :3] @ np.array([0, 0, z0]) + src.affine[:3, 3]
        data = np.asarray(src.dataobj)[:, :, z0 : z0 + n]
        path = out / f"ct_small_{name}_{fraction:g}.nii.gz"
        nib.save(nib.Nifti1Image(data, shifted, src.header), str(path))
        paths.append(str(path))
    return paths[0], paths[1]


def _workflow(image: str, label: str, seed: int, epochs: int, steps: int, pretrained: Path | None, out: Path, name: str) -> dict:
    cfg = yaml.safe_load((ROOT / "workflows" / "abdomen_ct_organs.yaml").read_text())
    cfg["name"] = name
    cfg["seed"] = seed
    cfg["data"]["training"] = [{"image": image, "label": label, "name": "example_ct_sm"}]
    cfg["data"]["validation"] = [{"image": "sample:ct_dicom", "label": "sample:ct_dicom_seg", "name": "example_ct_dicom"}]
    cfg["data"]["labels"] = {"liver": 5, "spleen": 1}
    cfg["training"].update({"epochs": epochs, "steps_per_epoch": steps, "val_every": epochs, "val_largest_component": ["liver", "spleen"]})
    cfg["model"]["pretrained"] = str(pretrained) if pretrained else None
    cfg["output"] = {"dir": str(out), "tensorboard": False}
    return cfg


def _run(cfg: dict) -> dict[str, float]:
    from medseg.engine import train
    from medseg.engine.logs import read_epoch_log

    run = Path(cfg["output"]["dir"]) / cfg["name"]
    done = run / "metrics.csv"
    if not (done.is_file() and len(read_epoch_log(done)) >= cfg["training"]["epochs"]):
        t0 = time.perf_counter()
        train(cfg, device="cpu", resume=(run / "checkpoints" / "last.pt").is_file())
        log.info("%s: %.0f s", cfg["name"], time.perf_counter() - t0)
    last = read_epoch_log(done)[-1]
    return {"liver": last["dice_liver"], "spleen": last["dice_spleen"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pretrained", type=Path, help="a pretraining checkpoint (default: train workflows/pretrain_ct_encoder.yaml)")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--fractions", type=float, nargs="+", default=[1.0, 0.5], help="fractions of the labelled slices")
    ap.add_argument("--epochs", type=int, default=6)
    ap.add_argument("--steps", type=int, default=10, help="steps per epoch")
    ap.add_argument("--arms", nargs="+", choices=["scratch", "pretrained"], default=["scratch", "pretrained"],
                    help="run only these arms now (the table needs both; finished runs are reused)")
    ap.add_argument("--out", type=Path, default=Path.home() / ".cache/medseg-bench/pretrain")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")

    pretrained = args.pretrained
    if pretrained is None and "pretrained" in args.arms:
        from medseg.engine import train

        pretrained = args.out / "pretrain" / "pretrain_ct_encoder" / "checkpoints" / "best.pt"
        if not pretrained.is_file():
            train(ROOT / "workflows" / "pretrain_ct_encoder.yaml", overrides=[f"output.dir={args.out / 'pretrain'}"], device="cpu")

    results: dict[tuple[float, str], list[dict[str, float]]] = {}
    for fraction in args.fractions:
        image, label = _reduced_case(fraction, args.out / "data")
        for seed in args.seeds:
            for arm, weights in (("scratch", None), ("pretrained", pretrained)):
                if arm not in args.arms:
                    continue
                cfg = _workflow(image, label, seed, args.epochs, args.steps, weights, args.out / "runs",
                                f"liver_spleen_f{fraction:g}_{arm}_seed{seed}")
                results.setdefault((fraction, arm), []).append(_run(cfg))
                log.info("fraction %g seed %d %s: %s", fraction, seed, arm, results[(fraction, arm)][-1])

    print(f"\n### held-out Dice after {args.epochs}×{args.steps} steps, mean ± sd over seeds {args.seeds}\n")
    print("| labelled slices | organ | scratch | fine-tuned | paired Δ (fine-tuned − scratch) per seed |")
    print("| --- | --- | ---: | ---: | --- |")
    for fraction in args.fractions:
        if len(results.get((fraction, "scratch"), [])) != len(results.get((fraction, "pretrained"), [])):
            continue
        for organ in ("liver", "spleen"):
            a = np.array([r[organ] for r in results[(fraction, "scratch")]])
            b = np.array([r[organ] for r in results[(fraction, "pretrained")]])
            print(f"| {fraction:g} | {organ} | {a.mean():.3f} ± {a.std():.3f} | {b.mean():.3f} ± {b.std():.3f} | "
                  f"{', '.join(f'{d:+.3f}' for d in b - a)} (mean {np.mean(b - a):+.3f}) |")


if __name__ == "__main__":
    main()
