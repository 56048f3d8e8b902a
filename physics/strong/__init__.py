"""Strong-lensing image simulation in batched PyTorch (CPU or GPU, unchanged).

- `mass`: deflection angles (SIE with core, shear, point masses, NFW, truncated NFW)
- `light`: surface-brightness profiles (Sersic, clumps, rings, spirals, arcs)
- `instrument`: pixel grid and integration, PSFs, FFT / separable convolution, photometry, noise
- `cosmology`: distances and point-mass Einstein radii (flat LambdaCDM)
- `scenes`: the simulation configurations, dispatching to the samplers of their scenes:
  `substructure` (DeepLense Model I and deeplense-common), `survey` (LSST-like lens finding);
  `draws` holds the random-draw helpers they share
- `render`: ray shooting a batch of scenes into noisy, scaled images
"""
