"""Low-dose CT enhancement (``task: gan``): a WGAN-GP generator/critic on low-/full-dose pairs.

Data (`medseg.config.gan_schema`): simulated pairs — each normal-dose training volume (RAS,
native grid, optional slice range) gets ``simulation.doses_per_case`` lower-dose copies made
once, at task start, by `medseg.ct.low_dose.simulate_low_dose` (one seed per case and dose,
from the workflow seed), kept in memory in network units (with ``simulation.texture_targets``
the target itself first gets a full-dose scan's noise and the lower doses are simulated from
it); or real pairs from
`medseg.data.ldct_pairs`. A training item is a list of ``patches_per_case`` patches: a random
in-plane crop of ``2k+1`` neighbouring low-dose slices of one random dose copy (input) and the
full-dose centre slice (target).

One training step (``batches_per_step = n_critic + 1``), after Gulrajani et al. 2017:

1. ``n_critic`` times, on its own batch: ``L_D = E[D(G(x))] − E[D(y)] + λ·GP`` (the penalty in
   fp32 with autocast off, `medseg.losses.gan.gradient_penalty`); one Adam step of the critic;
2. on one more batch: ``L_G = content(G(x), y) + w_adv·(−E[D(G(x))]) + w_perc·perceptual``;
   one Adam step of the generator (gradient clipping, warm-up + cosine schedule).

With ``loss.adversarial_weight: 0`` there is no critic and step 2 alone runs (the content-only
baseline, e.g. RED-CNN with MSE): its checkpoint's task is then ``denoising``.

Validation: every validation case at every ``simulation.val_doses`` (or its real low-dose
series), ``val_max_slices`` evenly spaced whole slices; PSNR and SSIM with data range 1 in
network units (= the width of ``preprocessing.hu_range`` in HU), RMSE in HU, for the
low-dose input and the generator's output. The score is the generator's mean PSNR (dB).
The checkpoint is the generator as an image-to-image model (`medseg enhance` applies it).
"""

from __future__ import annotations

import logging
import math
import random
from collections.abc import Hashable, Iterator, Mapping
from typing import Any

import numpy as np
import torch
from monai.transforms import Compose, EnsureTyped, MapTransform, RandSpatialCropSamplesd, Randomizable, SpatialPadd
from torch import nn

from medseg.checkpoint import Checkpoint, current_versions
from medseg.config import GanWorkflow
from medseg.engine.distributed import DistContext
from medseg.engine.optimization import Precision, backward_step, warmup_cosine
from medseg.engine.tasks.denoising import SliceStackd
from medseg.losses.gan import critic_scores, gradient_penalty, wasserstein_critic_loss, wasserstein_generator_loss
from medseg.losses.image import build_image_loss
from medseg.metrics.image import psnr, ssim
from medseg.models import build_model

__all__ = ["GanTask", "PickDosed", "build_pairs"]

log = logging.getLogger("medseg.engine")


class PickDosed(Randomizable, MapTransform):
    """Keep one random dose copy of ``image`` ``(D, …)`` → ``(1, …)`` (uniform over D)."""

    def __init__(self, keys: Any = "image") -> None:
        MapTransform.__init__(self, keys)

    def randomize(self, data: Any = None) -> None:
        self._d = int(self.R.randint(0, int(data)))

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            self.randomize(d[key].shape[0])
            d[key] = d[key][self._d : self._d + 1]
        return d


class _Pairs(torch.utils.data.Dataset):  # type: ignore[type-arg]
    """Cached pairs (``image`` (D, X, Y, Z), ``target`` (1, X, Y, Z), network units) under a random stage."""

    def __init__(self, items: list[dict[str, Any]], transform: Any) -> None:
        self.items, self.transform = items, transform

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> Any:
        return self.transform(dict(self.items[index]))


def _seed(*parts: int) -> int:
    return int(np.random.SeedSequence([int(p) & 0xFFFFFFFF for p in parts]).generate_state(1)[0])


def _to_units(hu: np.ndarray, plan: dict[str, Any]) -> torch.Tensor:
    lo, hi = float(plan["intensity"]["hu_min"]), float(plan["intensity"]["hu_max"])
    return torch.from_numpy(((np.asarray(hu, dtype=np.float32) - lo) / (hi - lo)).astype(np.float32))


def _load_ct(case: dict[str, Any]) -> tuple[np.ndarray, tuple[float, float, float]]:
    """A normal-dose case as a RAS float32 HU array (its slice range) and its spacing ``(sx, sy, sz)``.

    The slice spacing goes to the simulator too: its default photons per ray scale with the
    slice thickness (a 3 mm slice collects 3× the photons of a 1 mm one at the same dose).
    """
    from medseg.data.ldct_pairs import orient_ras
    from medseg.io import load_volume

    vol = orient_ras(load_volume(case["image"]))
    array = np.asarray(vol.array, dtype=np.float32)
    if array.ndim == 4 and array.shape[3] == 1:
        array = array[..., 0]
    if case.get("slices"):
        lo, hi = case["slices"]
        array = array[:, :, lo : min(hi, array.shape[2])]
        if array.shape[2] == 0:
            from medseg.errors import ConfigError

            raise ConfigError(f"case {case['name']}: slices {list(case['slices'])} select no slice of its {vol.shape[2]}")
    return np.ascontiguousarray(array), (float(vol.spacing[0]), float(vol.spacing[1]), float(vol.spacing[2]))


def build_pairs(cfg: GanWorkflow, role: str) -> list[dict[str, Any]]:
    """The pairs of ``role`` (``"training"`` / ``"validation"``), in network units.

    Returns:
        Items ``{"name", "target": (1, X, Y, Z), "image": (D, X, Y, Z), "doses": [D dose
        labels]}``: the D simulated dose copies (training: ``simulation.training_doses()``;
        validation: ``val_doses``) or the one real low-dose series (label ``"real"``).
    """
    from medseg.ct.low_dose import simulate_low_dose

    plan = cfg.preprocessing.plan()
    items = []
    if cfg.data.paired is not None:
        for case in _paired_split(cfg)[0 if role == "training" else 1]:
            from medseg.data.ldct_pairs import read_pair

            p = cfg.data.paired
            full, low = read_pair(case, p.position_tolerance_mm)
            items.append({"name": case.name, "target": _to_units(full.array, plan)[None], "image": _to_units(low.array, plan)[None],
                          "doses": ["real"]})
        return items
    sim = cfg.simulation
    doses = sim.training_doses() if role == "training" else list(sim.val_doses)
    for i, case in enumerate(_simulated_split(cfg)[0 if role == "training" else 1]):
        hu, spacing = _load_ct(case)
        if sim.texture_targets:
            # inserted variance ∝ 1/d − 1 = 1 at d = 0.5: that of a full-dose scan at this I0
            hu = simulate_low_dose(hu, spacing, dose_fraction=0.5, seed=_seed(cfg.seed, role == "training", i, -1),
                                   **sim.simulator_kwargs())
            log.info("gave %s the noise of a full-dose scan (simulation.texture_targets)", case["name"])
        copies = []
        for j, dose in enumerate(doses):
            copies.append(simulate_low_dose(hu, spacing, dose_fraction=float(dose), seed=_seed(cfg.seed, role == "training", i, j),
                                            **sim.simulator_kwargs()))
            log.info("simulated %s at %.3g of the full dose (%d slices)", case["name"], dose, hu.shape[2])
        items.append({"name": case["name"], "target": _to_units(hu, plan)[None],
                      "image": torch.stack([_to_units(c, plan) for c in copies]), "doses": [round(float(d), 4) for d in doses]})
    return items


def _simulated_split(cfg: GanWorkflow) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Training and validation cases (``image``, ``name``, ``slices``); validation split as `resolve_cases` does."""
    from pathlib import Path

    from medseg.io import case_name

    def case(c: Any) -> dict[str, Any]:
        return {"image": c.image, "name": c.name or case_name(Path(c.image)), "slices": c.slices}

    training = [case(c) for c in cfg.data.training]
    validation = [case(c) for c in cfg.data.validation]
    if not validation and cfg.data.val_fraction > 0 and len(training) >= 2:
        order = list(range(len(training)))
        random.Random(cfg.seed).shuffle(order)
        held = set(order[: max(1, round(cfg.data.val_fraction * len(training)))])
        validation = [c for i, c in enumerate(training) if i in held]
        training = [c for i, c in enumerate(training) if i not in held]
    return training, validation


def _paired_split(cfg: GanWorkflow) -> tuple[list[Any], list[Any]]:
    """Training and validation patients of paired data."""
    from medseg.data.ldct_pairs import find_paired_cases
    from medseg.errors import ConfigError

    p = cfg.data.paired
    assert p is not None
    cases = find_paired_cases(p.root, p.full_dose_dir, p.low_dose_dir)
    names = [c.name for c in cases]
    if p.validation_patients:
        unknown = sorted(set(p.validation_patients) - set(names))
        if unknown:
            raise ConfigError(f"data.paired.validation_patients {unknown} are not patient folders of {p.root} (found: {', '.join(names)})")
        held = set(p.validation_patients)
    elif cfg.data.val_fraction > 0 and len(cases) >= 2:
        order = list(range(len(cases)))
        random.Random(cfg.seed).shuffle(order)
        held = {names[i] for i in order[: max(1, round(cfg.data.val_fraction * len(cases)))]}
    else:
        held = set()
    training = [c for c in cases if c.name not in held]
    if not training:
        raise ConfigError(f"data.paired: every patient of {p.root} is a validation patient; none is left to train on")
    return training, [c for c in cases if c.name in held]


def _stack_slices(volume: torch.Tensor, zs: list[int], k: int) -> torch.Tensor:
    """``(X, Y, Z)`` → ``(len(zs), 2k+1, X, Y)``: each slice with its k neighbours (edges replicated)."""
    n = volume.shape[2]
    return torch.stack([volume[:, :, [min(max(z + o, 0), n - 1) for o in range(-k, k + 1)]].permute(2, 0, 1) for z in zs])


class GanTask:
    """Low-dose CT enhancement behind the `medseg.engine.tasks.Task` protocol."""

    deployable = "generator"
    case_columns = ["case", "dose", "psnr_low_db", "psnr_db", "ssim_low", "ssim", "rmse_low_hu", "rmse_hu"]

    def __init__(self, cfg: GanWorkflow, ctx: DistContext) -> None:
        self.cfg, self.ctx = cfg, ctx
        self.plan = cfg.preprocessing.plan()
        self.adversarial = cfg.loss.adversarial_weight > 0
        # the checkpoint's task: a content-only generator is a plain denoiser
        self.name = "gan" if self.adversarial else "denoising"
        self.batches_per_step = cfg.optim.n_critic + 1 if self.adversarial else 1
        k, tcfg = cfg.model.generator.context_slices, cfg.training
        items = build_pairs(cfg, "training")
        random_tf = Compose([
            SpatialPadd(keys=["image", "target"], spatial_size=[*tcfg.patch_size, 2 * k + 1], mode="edge"),
            RandSpatialCropSamplesd(keys=["image", "target"], roi_size=[*tcfg.patch_size, 2 * k + 1],
                                    num_samples=tcfg.patches_per_case, random_size=False),
            PickDosed(keys="image"),
            SliceStackd(keys="image"),
            EnsureTyped(keys=["image", "target"], dtype=torch.float32, track_meta=False),
        ])
        self.train_dataset = _Pairs([{k_: v for k_, v in it.items() if k_ != "doses"} for it in items], random_tf)
        self.n_train_cases = len(items)
        self.val_items = build_pairs(cfg, "validation") if ctx.is_main else []
        self.n_val_cases = len(self.val_items) if ctx.is_main else len(_simulated_split(cfg)[1] if cfg.data.paired is None else _paired_split(cfg)[1])
        self.content = build_image_loss(cfg.loss.content, spatial_dims=2, data_range=1.0)
        self.terms = ["content", *(["adversarial", "critic", "gradient_penalty", "wasserstein"] if self.adversarial else []),
                      *(["perceptual"] if cfg.loss.perceptual_weight > 0 else [])]
        self.columns = ["train_loss", *(f"train_{t}" for t in self.terms), "lr", *(["lr_critic"] if self.adversarial else []),
                        "epoch_seconds", "val_psnr_db", "val_ssim", "val_rmse_hu", "val_psnr_low_db", "val_ssim_low", "val_rmse_low_hu"]
        self.networks: dict[str, nn.Module] = {}
        self.optimizers: dict[str, torch.optim.Optimizer] = {}
        self.schedulers: dict[str, Any] = {}
        self.perceptual: nn.Module | None = None

    # ---- networks and optimisation

    def build_networks(self, resume: bool) -> None:
        """Generator (`build_model`), critic (`PatchCritic`), and the frozen perceptual encoder if asked for."""
        mcfg, dev = self.cfg.model, self.ctx.device
        self.model_cfg = mcfg.generator.build_dict()
        self.generator = build_model(self.model_cfg).to(dev)
        self.networks = {"generator": self.generator}
        if self.adversarial:
            c = mcfg.critic
            self.critic = build_model({"name": "patch_critic", "in_channels": 2 if c.conditional else 1, "channels": c.channels,
                                       "n_layers": c.n_layers}).to(dev)
            self.networks["critic"] = self.critic
        if self.cfg.loss.perceptual_weight > 0:
            from medseg.losses.perceptual import EncoderFeatureLoss

            assert self.cfg.loss.perceptual_checkpoint is not None
            self.perceptual = EncoderFeatureLoss(self.cfg.loss.perceptual_checkpoint, self.plan["intensity"],
                                                 self.cfg.loss.perceptual_stages).to(dev)

    def configure_optimizers(self, steps_per_epoch: int) -> None:
        """Adam (GAN betas) per network; warm-up + cosine per optimizer, one step per its own optimizer step."""
        o = self.cfg.optim
        total, warm = self.cfg.training.epochs * steps_per_epoch, o.warmup_epochs * steps_per_epoch
        g = torch.optim.Adam(self.generator.parameters(), lr=o.lr_generator, betas=tuple(o.betas))
        self.optimizers = {"generator": g}
        self.schedulers = {"generator": warmup_cosine(g, total, warm, o.min_lr_ratio)}
        if self.adversarial:
            c = torch.optim.Adam(self.critic.parameters(), lr=o.lr_critic, betas=tuple(o.betas))
            self.optimizers["critic"] = c
            self.schedulers["critic"] = warmup_cosine(c, total * o.n_critic, warm * o.n_critic, o.min_lr_ratio)

    # ---- one epoch

    def epoch_start(self, epoch: int) -> bool:
        for net in self.networks.values():
            net.train()
        return False

    def _critic_input(self, image: torch.Tensor, low: torch.Tensor) -> torch.Tensor:
        if not self.cfg.model.critic.conditional:
            return image
        k = self.cfg.model.generator.context_slices
        return torch.cat([image, low[:, k : k + 1].to(image.dtype)], dim=1)

    def train_step(self, nets: dict[str, nn.Module], batches: Iterator[dict[str, Any]], precision: Precision) -> dict[str, torch.Tensor]:
        """``n_critic`` critic steps (WGAN-GP), then one generator step (see the module docstring)."""
        dev, lcfg, ocfg = self.ctx.device, self.cfg.loss, self.cfg.optim
        out: dict[str, torch.Tensor] = {}
        if self.adversarial:
            critic_losses, gps, dists = [], [], []
            for _ in range(ocfg.n_critic):
                batch = next(batches)
                low, full = batch["image"].to(dev), batch["target"].to(dev)
                with torch.no_grad(), precision.autocast():
                    fake = nets["generator"](low)
                real_in, fake_in = self._critic_input(full, low), self._critic_input(fake.float(), low)
                with precision.autocast():
                    d_real, d_fake = critic_scores(nets["critic"], real_in), critic_scores(nets["critic"], fake_in)
                gp = gradient_penalty(nets["critic"], real_in, fake_in)  # fp32, autocast off inside
                w = wasserstein_critic_loss(d_real, d_fake)
                loss_c = w + lcfg.gp_lambda * gp
                backward_step(loss_c, self.optimizers["critic"], precision.scalers["critic"], self.critic.parameters(),
                              ocfg.critic_grad_clip, term="critic loss")
                self.schedulers["critic"].step()
                critic_losses.append(loss_c.detach())
                gps.append(gp.detach())
                dists.append(-w.detach())
            out |= {"critic": torch.stack(critic_losses).mean(), "gradient_penalty": torch.stack(gps).mean(),
                    "wasserstein": torch.stack(dists).mean()}
        batch = next(batches)
        low, full = batch["image"].to(dev), batch["target"].to(dev)
        with precision.autocast():
            fake = nets["generator"](low)
        fake = fake.float()
        # the content loss in fp32: the MSE of network units is tiny and loses digits in fp16
        content = torch.stack(list(self.content.terms(fake, full).values())).sum()
        loss = content
        out["content"] = content.detach()
        if self.adversarial:
            with precision.autocast():
                adv = wasserstein_generator_loss(critic_scores(nets["critic"], self._critic_input(fake, low)))
            loss = loss + lcfg.adversarial_weight * adv
            out["adversarial"] = adv.detach()
        if self.perceptual is not None:
            with precision.autocast():
                perc = self.perceptual(fake, full).float()
            loss = loss + lcfg.perceptual_weight * perc
            out["perceptual"] = perc.detach()
        backward_step(loss, self.optimizers["generator"], precision.scalers["generator"], self.generator.parameters(),
                      ocfg.grad_clip, term="generator loss")
        self.schedulers["generator"].step()
        return {"loss": loss.detach(), **out}

    def epoch_values(self) -> dict[str, Any]:
        values = {"lr": self.optimizers["generator"].param_groups[0]["lr"]}
        if self.adversarial:
            values["lr_critic"] = self.optimizers["critic"].param_groups[0]["lr"]
        return values

    # ---- validation and checkpoint

    def enhance_slices(self, low: torch.Tensor, zs: list[int], precision: Precision, batch: int = 8) -> torch.Tensor:
        """The generator on whole slices `zs` of a low-dose volume ``(X, Y, Z)`` → ``(X, Y, len(zs))`` (network units)."""
        k, outs = self.cfg.model.generator.context_slices, []
        with torch.no_grad(), precision.autocast():
            for i in range(0, len(zs), batch):
                x = _stack_slices(low, zs[i : i + batch], k).to(self.ctx.device)
                outs.append(self.generator(x).float()[:, 0].cpu())
        return torch.cat(outs).permute(1, 2, 0)

    def validate(self, precision: Precision) -> tuple[dict[str, float], list[dict[str, Any]]]:
        """PSNR (the score), SSIM and RMSE (HU) of the generator's output and of the low-dose input."""
        self.generator.eval()
        scale = float(self.plan["intensity"]["hu_max"] - self.plan["intensity"]["hu_min"])
        rows: list[dict[str, Any]] = []
        try:
            for item in self.val_items:
                full = item["target"][0]
                n, m = full.shape[2], self.cfg.training.val_max_slices
                zs = sorted({int(z) for z in np.linspace(0, n - 1, m).round()}) if m and n > m else list(range(n))
                c = full[:, :, zs].numpy()
                for d, dose in enumerate(item["doses"]):
                    low = item["image"][d]
                    out = self.enhance_slices(low, zs, precision).numpy()
                    lo = low[:, :, zs].numpy()
                    rows.append({
                        "case": item["name"], "dose": dose,
                        "psnr_low_db": psnr(lo, c, data_range=1.0), "psnr_db": psnr(out, c, data_range=1.0),
                        "ssim_low": ssim(lo, c, data_range=1.0), "ssim": ssim(out, c, data_range=1.0),
                        "rmse_low_hu": float(np.sqrt(np.mean((lo - c) ** 2)) * scale), "rmse_hu": float(np.sqrt(np.mean((out - c) ** 2)) * scale),
                    })
        finally:
            self.generator.train()
        mean = {k: float(np.mean([r[k] for r in rows])) for k in self.case_columns[2:]}
        return {"score": mean["psnr_db"], "val_psnr_db": mean["psnr_db"], "val_ssim": mean["ssim"], "val_rmse_hu": mean["rmse_hu"],
                "val_psnr_low_db": mean["psnr_low_db"], "val_ssim_low": mean["ssim_low"], "val_rmse_low_hu": mean["rmse_low_hu"]}, rows

    def describe(self, row: dict[str, Any]) -> str:
        if math.isnan(row.get("val_psnr_db", math.nan)):
            return ""
        return (f"  | val PSNR {row['val_psnr_db']:.2f} dB (low dose {row['val_psnr_low_db']:.2f})  "
                f"SSIM {row['val_ssim']:.4f} ({row['val_ssim_low']:.4f})  RMSE {row['val_rmse_hu']:.1f} HU ({row['val_rmse_low_hu']:.1f})")

    def checkpoint(self, metrics: dict[str, Any]) -> Checkpoint:
        """The generator as CONTRACTS.md's image-to-image checkpoint (whole axial slices, 2.5-D context)."""
        k = self.cfg.model.generator.context_slices
        return Checkpoint(
            task=self.name, model=self.model_cfg, state_dict=self.generator.state_dict(), labels={}, preprocessing=self.plan,
            inference={"spatial_dims": 2, "context_slices": k, "roi_size": None, "overlap": 0.25},
            config=self.cfg.model_dump(mode="json"), versions=current_versions(), metrics=metrics,
        )
