"""Lensing physics shared by the simulators and any physics-informed model.

`physics.microlensing` holds the light-curve side: the survey (time grid, noise), the
single-lens (PSPL) magnification, the adaptive binary-lens magnification on top of
VBBinaryLensing, and the event generator that `simulate.py --task microlensing` drives.
`physics.strong` holds the image side: lens mass and light profiles, the instrument, and the
batched renderer behind `simulate.py --task lens | substructure | superres`.
"""

__version__ = "0.2.0"
