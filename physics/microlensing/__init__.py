"""Microlensing light curves for a Roman-like Galactic Bulge season.

- `survey`: the time grid, missing epochs and the flux-based photometric noise model.
- `single`: point-source point-lens (PSPL) magnification.
- `binary`: binary-lens magnification, VBBinaryLensing evaluated adaptively.
- `events`: presets, parameter draws, the shared detectability cut and the block simulator.
"""
