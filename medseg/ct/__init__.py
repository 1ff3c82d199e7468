"""CT physics: a torch projector with filtered back-projection, a low-dose simulator and the
noise power spectrum.

- `medseg.ct.projector`: `CTGeometry` (parallel or fan beam), `Projector` (forward projection,
  its exact adjoint, filtered back-projection), batched over slices, differentiable, on any
  torch device.
- `medseg.ct.fourier_projector`: `FourierProjector`, the same parallel-beam forward projection
  and FBP by non-uniform FFTs (FINUFFT) on the CPU: the fast path of the simulator.
- `medseg.ct.low_dose`: `simulate_low_dose` (noise insertion in the line-integral domain).
- `medseg.ct.nps`: `noise_power_spectrum`, `radial_average`, ROIs in uniform regions
  (`uniform_roi_centres`) and NPS comparisons (`nps_relative_error`, `mean_frequency`).
"""
