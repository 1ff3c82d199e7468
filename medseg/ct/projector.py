"""A torch CT projector: forward projection, its exact adjoint and filtered back-projection.

Written in torch rather than taken from a library because none fits: astra-toolbox brings
~380 MB of CUDA wheels even for its CPU path, the torch-based projectors on PyPI
(torch-radon, diffct, pyronn-torch) are CUDA kernels without a CPU path, and scikit-image's
`radon`/`iradon` are NumPy-only, one slice at a time and not differentiable. This module is
pure torch (`grid_sample`, FFTs, broadcasting), so it is differentiable, batched over slices
and runs unchanged on a GPU. See benchmarks/bench_low_dose.py for the comparison with
scikit-image (docs/benchmarks.md, "Low-dose CT simulation").

Geometry (`CTGeometry`):

- **parallel**: ``n_views`` views evenly over 180°, a flat detector of ``n_detectors`` bins
  ``detector_spacing_mm`` apart, centred on the rotation axis (the image centre).
- **fan**: a full 360° scan, source ``source_to_isocenter_mm`` from the rotation axis and an
  **equi-angular** (arc, third-generation) detector whose bins are
  ``detector_spacing_mm / source_to_isocenter_mm`` radians apart (the bin spacing measured at
  the isocentre). Defaults 595 / 1085.6 mm are those of a Siemens SOMATOM Definition, the
  scanner of the AAPM/Mayo low-dose challenge data.

Coordinates: an image is indexed ``[..., i, j]`` (medseg's ``Volume`` array axes x, y of one
axial slice); physical ``u = (i - (nx-1)/2)·sx``, ``v = (j - (ny-1)/2)·sy`` in mm, rotation
axis at the image centre. The reconstruction circle is the circle through the image corners,
so nothing of the image is cut off (the default detector covers it).

Operators (`Projector`):

- ``forward(mu)``: line integrals ``p = ∫ μ ds`` (μ in 1/mm, p dimensionless) by sampling the
  bilinearly interpolated image every ``step_mm`` along each ray (ray-driven, as
  scikit-image's rotate-and-sum). Shape ``(Z, nx, ny) -> (Z, n_views, n_detectors)``.
- ``adjoint(sino)``: the exact transpose of ``forward`` (``<A x, y> == <x, Aᵀ y>`` up to float
  rounding), from the backward pass of ``grid_sample``.
- ``fbp(sino, filter=...)``: filtered back-projection (ramp filter with a window, then a
  pixel-driven back-projection with linear interpolation on the detector, as scikit-image's
  `iradon`); for the fan beam the equi-angular weighted FBP of Kak & Slaney (Principles of
  Computerized Tomographic Imaging, 1988, §3.4.1).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal

import torch
import torch.nn.functional as F

from medseg.errors import ConfigError

GeometryKind = Literal["parallel", "fan"]
#: Ramp-filter windows (the names scikit-image's `iradon` uses, plus "ram-lak" for none).
FILTERS = ("ram-lak", "shepp-logan", "cosine", "hamming", "hann")

# Elements of one grid_sample output chunk (per call): bounds memory to ~64 MB (+ the grid)
# whatever the number of slices, views and detector bins.
_CHUNK_ELEMENTS = 1 << 24


@dataclass(frozen=True)
class CTGeometry:
    """Acquisition geometry of one axial slice.

    Args:
        image_shape: ``(nx, ny)`` pixels of the slice.
        pixel_spacing_mm: ``(sx, sy)`` in mm.
        kind: ``"parallel"`` (180°) or ``"fan"`` (360°, equi-angular detector).
        n_views: projection angles; default 720 (parallel, over 180°) or 1440 (fan, over 360°),
            the same number of rays per half turn.
        n_detectors: detector bins; default: enough to cover the circle through the image
            corners.
        detector_spacing_mm: bin spacing (fan: measured at the isocentre); default the
            smaller pixel spacing.
        source_to_isocenter_mm: fan beam only.
        step_mm: sampling step along each ray of the forward projection; default the smaller
            pixel spacing.

    Raises:
        ConfigError: a value is out of range (e.g. the image does not fit inside the fan).
    """

    image_shape: tuple[int, int]
    pixel_spacing_mm: tuple[float, float]
    kind: GeometryKind = "parallel"
    n_views: int | None = None
    n_detectors: int | None = None
    detector_spacing_mm: float | None = None
    source_to_isocenter_mm: float = 595.0
    step_mm: float | None = None
    # resolved values (filled in __post_init__)
    views: int = field(init=False)
    detectors: int = field(init=False)
    det_spacing: float = field(init=False)
    step: float = field(init=False)
    n_samples: int = field(init=False)

    def __post_init__(self) -> None:
        nx, ny = (int(v) for v in self.image_shape)
        sx, sy = (float(v) for v in self.pixel_spacing_mm)
        if nx < 2 or ny < 2:
            raise ConfigError(f"CT geometry: image_shape must be at least 2×2 pixels, got {self.image_shape}")
        if not (sx > 0 and sy > 0 and math.isfinite(sx) and math.isfinite(sy)):
            raise ConfigError(f"CT geometry: pixel_spacing_mm must be positive, got {self.pixel_spacing_mm}")
        if self.kind not in ("parallel", "fan"):
            raise ConfigError(f"CT geometry: kind must be 'parallel' or 'fan', got {self.kind!r}")
        views = self.n_views if self.n_views is not None else (720 if self.kind == "parallel" else 1440)
        if views < 1:
            raise ConfigError(f"CT geometry: n_views must be ≥ 1, got {views}")
        det = float(self.detector_spacing_mm) if self.detector_spacing_mm is not None else min(sx, sy)
        step = float(self.step_mm) if self.step_mm is not None else min(sx, sy)
        if not (det > 0 and step > 0):
            raise ConfigError(f"CT geometry: detector_spacing_mm and step_mm must be positive, got {det}, {step}")
        radius = self.radius_mm_for(nx, ny, sx, sy)
        if self.kind == "parallel":
            need = 2 * math.ceil(radius / det) + 1
        else:
            if radius >= self.source_to_isocenter_mm:
                raise ConfigError(
                    f"CT geometry: the image (radius {radius:.0f} mm) does not fit inside the fan "
                    f"(source_to_isocenter_mm={self.source_to_isocenter_mm}); use a larger source distance"
                )
            gamma_max = math.asin(radius / self.source_to_isocenter_mm)
            need = 2 * math.ceil(gamma_max / (det / self.source_to_isocenter_mm)) + 1
        detectors = int(self.n_detectors) if self.n_detectors is not None else need
        if detectors < 2:
            raise ConfigError(f"CT geometry: n_detectors must be ≥ 2, got {detectors}")
        object.__setattr__(self, "image_shape", (nx, ny))
        object.__setattr__(self, "pixel_spacing_mm", (sx, sy))
        object.__setattr__(self, "views", int(views))
        object.__setattr__(self, "detectors", detectors)
        object.__setattr__(self, "det_spacing", det)
        object.__setattr__(self, "step", step)
        object.__setattr__(self, "n_samples", int(math.ceil(2 * radius / step)))

    @staticmethod
    def radius_mm_for(nx: int, ny: int, sx: float, sy: float) -> float:
        """Radius (mm) of the circle through the corners of an ``nx × ny`` image."""
        return 0.5 * math.hypot(nx * sx, ny * sy)

    @property
    def radius_mm(self) -> float:
        """Radius (mm) of the reconstruction circle (through the image corners)."""
        nx, ny = self.image_shape
        return self.radius_mm_for(nx, ny, *self.pixel_spacing_mm)

    @property
    def angles(self) -> torch.Tensor:
        """View angles in radians (float64): θ over [0, π) (parallel) or β over [0, 2π) (fan)."""
        span = math.pi if self.kind == "parallel" else 2 * math.pi
        return torch.arange(self.views, dtype=torch.float64) * (span / self.views)

    @property
    def detector_positions(self) -> torch.Tensor:
        """Bin centres (float64): mm from the centre (parallel) or fan angle γ in rad (fan)."""
        k = torch.arange(self.detectors, dtype=torch.float64) - (self.detectors - 1) / 2
        if self.kind == "parallel":
            return k * self.det_spacing
        return k * (self.det_spacing / self.source_to_isocenter_mm)


def _window(name: str, freq: torch.Tensor) -> torch.Tensor:
    """Ramp-filter window at normalised frequencies `freq` (cycles per bin, 0…0.5)."""
    if name == "ram-lak":
        return torch.ones_like(freq)
    if name == "shepp-logan":
        return torch.special.sinc(freq)
    if name == "cosine":
        return torch.cos(math.pi * freq)
    if name == "hamming":
        return 0.54 + 0.46 * torch.cos(2 * math.pi * freq)
    if name == "hann":
        return 0.5 * (1 + torch.cos(2 * math.pi * freq))
    raise ConfigError(f"FBP filter must be one of {', '.join(FILTERS)}, got {name!r}")


class Projector:
    """Forward projection, its adjoint and FBP for one `CTGeometry`, batched over slices.

    Ray tables and filters are computed once per device and dtype and kept on the instance
    (make one `Projector` per geometry and reuse it for every slice of a volume).

    Example:
        >>> geo = CTGeometry((256, 256), (0.8, 0.8), kind="parallel", n_views=360)
        >>> proj = Projector(geo)
        >>> mu = torch.zeros(1, 256, 256); mu[:, 100:150, 100:150] = 0.02
        >>> sino = proj.forward(mu)            # (1, 360, n_detectors), line integrals
        >>> back = proj.fbp(sino)              # (1, 256, 256), ≈ mu
    """

    def __init__(self, geometry: CTGeometry) -> None:
        self.geometry = geometry
        self._rays: dict[tuple, tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = {}
        self._pixels: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}
        self._filters: dict[tuple, torch.Tensor] = {}

    # ---------------------------------------------------------------- helpers
    def _check_image(self, image: torch.Tensor) -> tuple[torch.Tensor, bool]:
        if image.ndim == 2:
            image, squeeze = image.unsqueeze(0), True
        else:
            squeeze = False
        if image.ndim != 3 or tuple(image.shape[1:]) != self.geometry.image_shape:
            raise ConfigError(f"projector: expected an image (Z, {self.geometry.image_shape[0]}, "
                              f"{self.geometry.image_shape[1]}) or one slice, got shape {tuple(image.shape)}")
        if not image.is_floating_point():
            image = image.float()
        return image, squeeze

    def _check_sinogram(self, sino: torch.Tensor) -> tuple[torch.Tensor, bool]:
        g = self.geometry
        if sino.ndim == 2:
            sino, squeeze = sino.unsqueeze(0), True
        else:
            squeeze = False
        if sino.ndim != 3 or tuple(sino.shape[1:]) != (g.views, g.detectors):
            raise ConfigError(f"projector: expected a sinogram (Z, {g.views}, {g.detectors}) or one view set, "
                              f"got shape {tuple(sino.shape)}")
        if not sino.is_floating_point():
            sino = sino.float()
        return sino, squeeze

    def _normalise(self, u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """Physical (u, v) in mm → grid_sample coordinates (x indexes j/W, y indexes i/H)."""
        nx, ny = self.geometry.image_shape
        sx, sy = self.geometry.pixel_spacing_mm
        return torch.stack((v * (2.0 / (ny * sy)), u * (2.0 / (nx * sx))), dim=-1)

    def _ray_tables(self, device: torch.device, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Per view and bin: a point on the ray (A) and its direction (B), in grid units, and
        the sample offsets s (mm) along it, so that sample m of a ray is A + s[m]·B."""
        key = (device, dtype)
        if key not in self._rays:
            g = self.geometry
            ang = g.angles[:, None]
            det = g.detector_positions[None, :]
            if g.kind == "parallel":
                # ray at detector offset t: t·(cos θ, sin θ) + s·(−sin θ, cos θ)
                au, av = det * torch.cos(ang), det * torch.sin(ang)
                bu, bv = (-torch.sin(ang)).expand_as(au), torch.cos(ang).expand_as(au)
            else:
                # source at D(cos β, sin β); central ray towards the axis, rotated by γ
                d = g.source_to_isocenter_mm
                cu, cv = -torch.cos(ang), -torch.sin(ang)
                bu = cu * torch.cos(det) - cv * torch.sin(det)
                bv = cu * torch.sin(det) + cv * torch.cos(det)
                # sample around the ray's closest approach to the axis (D cos γ from the source)
                reach = d * torch.cos(det)
                au = d * torch.cos(ang) + reach * bu
                av = d * torch.sin(ang) + reach * bv
            a = self._normalise(au, av)
            b = self._normalise(bu, bv)
            s = (torch.arange(g.n_samples, dtype=torch.float64) + 0.5 - g.n_samples / 2) * g.step
            self._rays[key] = (a.to(device, dtype), b.to(device, dtype), s.to(device, dtype))
        return self._rays[key]

    def _pixel_coords(self, device: torch.device, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        key = (device, dtype)
        if key not in self._pixels:
            nx, ny = self.geometry.image_shape
            sx, sy = self.geometry.pixel_spacing_mm
            u = (torch.arange(nx, dtype=torch.float64) - (nx - 1) / 2) * sx
            v = (torch.arange(ny, dtype=torch.float64) - (ny - 1) / 2) * sy
            uu, vv = torch.meshgrid(u, v, indexing="ij")
            self._pixels[key] = (uu.reshape(-1).to(device, dtype), vv.reshape(-1).to(device, dtype))
        return self._pixels[key]

    def _filter(self, name: str, device: torch.device, dtype: torch.dtype) -> tuple[torch.Tensor, int]:
        """Half-spectrum (rfft) of the windowed ramp filter, zero-padded length ≥ 2·bins."""
        g = self.geometry
        size = max(64, 1 << math.ceil(math.log2(2 * g.detectors)))
        key = (name, device, dtype)
        if key not in self._filters:
            n = torch.cat((torch.arange(0, size // 2 + 1), torch.arange(size // 2 - 1, 0, -1))).to(torch.float64)
            kernel = torch.zeros(size, dtype=torch.float64)
            odd = (n % 2) == 1
            if g.kind == "parallel":
                # band-limited ramp sampled on the bins (Kak & Slaney §3.3) times τ²; the
                # 1/τ is applied in fbp
                kernel[0] = 0.25
                kernel[odd] = -1.0 / (math.pi * n[odd]) ** 2
            else:
                # equi-angular fan: g(nα) = ½ (nα / sin nα)² h(nα) (Kak & Slaney §3.4.1)
                # times α (the convolution's integration step)
                alpha = g.det_spacing / g.source_to_isocenter_mm
                kernel[0] = 1.0 / (8 * alpha)
                kernel[odd] = -alpha / (2 * math.pi**2 * torch.sin(n[odd] * alpha) ** 2)
            spectrum = torch.fft.rfft(kernel).real
            spectrum = spectrum * _window(name, torch.fft.rfftfreq(size, dtype=torch.float64))
            self._filters[key] = spectrum.to(device, dtype)
        return self._filters[key], size

    def _views_per_chunk(self, per_view: int, n_slices: int) -> int:
        return max(1, min(self.geometry.views, _CHUNK_ELEMENTS // max(1, per_view * n_slices)))

    # --------------------------------------------------------------- operators
    def forward(self, image: torch.Tensor) -> torch.Tensor:
        """Line integrals of `image` (μ in 1/mm) along every ray: the sinogram.

        Args:
            image: ``(Z, nx, ny)`` or ``(nx, ny)`` tensor, any device.

        Returns:
            ``(Z, n_views, n_detectors)`` (or without Z) tensor of line integrals (μ·mm).

        Raises:
            ConfigError: the image shape does not match the geometry.
        """
        x, squeeze = self._check_image(image)
        g = self.geometry
        a, b, s = self._ray_tables(x.device, x.dtype)
        z = x.shape[0]
        inp = x.unsqueeze(0)
        per = self._views_per_chunk(g.n_samples * g.detectors, z)
        parts = []
        for v0 in range(0, g.views, per):
            v1 = min(g.views, v0 + per)
            grid = torch.addcmul(a[v0:v1, None], s[None, :, None, None], b[v0:v1, None])
            samples = F.grid_sample(inp, grid.reshape(1, -1, g.detectors, 2), mode="bilinear",
                                    padding_mode="zeros", align_corners=False)
            parts.append(samples.reshape(z, v1 - v0, g.n_samples, g.detectors).sum(dim=2))
        sino = torch.cat(parts, dim=1) * g.step
        return sino[0] if squeeze else sino

    def adjoint(self, sino: torch.Tensor) -> torch.Tensor:
        """The exact transpose of `forward` (unfiltered back-projection Aᵀ y).

        Computed as the vector-Jacobian product of the (linear) forward projection, one chunk
        of views at a time, so it is the transpose to float rounding whatever the geometry.
        Not itself differentiable (use `fbp` inside a network's graph).

        Args:
            sino: ``(Z, n_views, n_detectors)`` or ``(n_views, n_detectors)``.

        Returns:
            ``(Z, nx, ny)`` (or without Z).
        """
        y, squeeze = self._check_sinogram(sino)
        g = self.geometry
        a, b, s = self._ray_tables(y.device, y.dtype)
        z = y.shape[0]
        nx, ny = g.image_shape
        out = torch.zeros(1, z, nx, ny, device=y.device, dtype=y.dtype)
        per = self._views_per_chunk(g.n_samples * g.detectors, z)
        y = y.detach() * g.step
        for v0 in range(0, g.views, per):
            v1 = min(g.views, v0 + per)
            grid = torch.addcmul(a[v0:v1, None], s[None, :, None, None], b[v0:v1, None]).reshape(1, -1, g.detectors, 2)
            x0 = torch.zeros(1, z, nx, ny, device=y.device, dtype=y.dtype, requires_grad=True)
            with torch.enable_grad():
                samples = F.grid_sample(x0, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
                weights = y[:, v0:v1, None, :].expand(z, v1 - v0, g.n_samples, g.detectors).reshape(samples.shape)
                (grad,) = torch.autograd.grad(samples, x0, grad_outputs=weights)
            out += grad
        return out[0, 0] if squeeze else out[0]

    def filter_sinogram(self, sino: torch.Tensor, filter: str = "ram-lak") -> torch.Tensor:
        """Ramp-filter each view (fan beam: after the cos γ pre-weighting), scaled so that
        `backproject_filtered` of the result is the FBP image.

        Args:
            sino: ``(Z, n_views, n_detectors)``.
            filter: window, one of `FILTERS`.
        """
        g = self.geometry
        spectrum, size = self._filter(filter, sino.device, sino.dtype)
        if g.kind == "fan":
            gamma = g.detector_positions.to(sino.device, sino.dtype)
            sino = sino * (g.source_to_isocenter_mm * torch.cos(gamma))
        q = torch.fft.irfft(torch.fft.rfft(sino, n=size, dim=-1) * spectrum, n=size, dim=-1)[..., : g.detectors]
        if g.kind == "parallel":
            return q * (math.pi / (g.views * g.det_spacing))
        return q * (2 * math.pi / g.views)

    def backproject_filtered(self, q: torch.Tensor) -> torch.Tensor:
        """Pixel-driven back-projection with linear interpolation on the detector (the FBP
        back-projector; fan beam with its 1/L² weight). Input from `filter_sinogram`."""
        g = self.geometry
        z = q.shape[0]
        nx, ny = g.image_shape
        u, v = self._pixel_coords(q.device, q.dtype)
        ui, vj = u.reshape(nx, ny)[:, 0], v.reshape(nx, ny)[0, :]
        npix = u.shape[0]
        ang = g.angles.to(q.device, q.dtype)
        out = torch.zeros(z, npix, device=q.device, dtype=q.dtype)
        per = self._views_per_chunk(npix, z)
        for v0 in range(0, g.views, per):
            v1 = min(g.views, v0 + per)
            th = ang[v0:v1]
            rows = ((torch.arange(v1 - v0, device=q.device, dtype=q.dtype) + 0.5) * (2.0 / (v1 - v0)) - 1.0)
            if g.kind == "parallel":
                # t(i, j) = u_i cos θ + v_j sin θ is separable: the grid is one broadcast add of a
                # per-row and a per-column table (building it point by point costs more than
                # the sampling itself on a CPU)
                scale = 2.0 / (g.det_spacing * g.detectors)
                row_t = torch.stack((ui[:, None] * torch.cos(th)[None, :] * scale, rows[None, :].expand(nx, -1)), dim=-1)
                col_t = torch.stack((vj[:, None] * torch.sin(th)[None, :] * scale, torch.zeros(ny, v1 - v0, device=q.device, dtype=q.dtype)), dim=-1)
                grid = (row_t[:, None] + col_t[None, :]).reshape(npix, v1 - v0, 2)
                weight = None
            else:
                d = g.source_to_isocenter_mm
                cu, cv = -torch.cos(th)[None, :], -torch.sin(th)[None, :]
                wu, wv = u[:, None] + d * cu, v[:, None] + d * cv  # pixel − source
                gamma = torch.atan2(cu * wv - cv * wu, cu * wu + cv * wv)
                alpha = g.det_spacing / d
                gx = gamma * (2.0 / (alpha * g.detectors))
                weight = 1.0 / (wu * wu + wv * wv)
                grid = torch.stack((gx, rows[None, :].expand_as(gx)), dim=-1)
            samples = F.grid_sample(q[None, :, v0:v1, :], grid[None], mode="bilinear",
                                    padding_mode="zeros", align_corners=False)[0]  # (Z, npix, views)
            if weight is not None:
                samples = samples * weight
            out += samples.sum(dim=-1)
        return out.reshape(z, nx, ny)

    def fbp(self, sino: torch.Tensor, filter: str = "ram-lak") -> torch.Tensor:
        """Filtered back-projection of line integrals back to μ (1/mm).

        Args:
            sino: ``(Z, n_views, n_detectors)`` or ``(n_views, n_detectors)`` line integrals.
            filter: ramp-filter window: ``"ram-lak"`` (none), ``"shepp-logan"``, ``"cosine"``,
                ``"hamming"``, ``"hann"`` (scikit-image's definitions).

        Returns:
            ``(Z, nx, ny)`` (or without Z) image in the units of μ.

        Raises:
            ConfigError: shape mismatch or unknown filter.
        """
        y, squeeze = self._check_sinogram(sino)
        if filter not in FILTERS:
            raise ConfigError(f"FBP filter must be one of {', '.join(FILTERS)}, got {filter!r}")
        img = self.backproject_filtered(self.filter_sinogram(y, filter))
        return img[0] if squeeze else img
