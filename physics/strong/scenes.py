"""Simulation configurations (`CONFIGS`) and `sample`, which draws a configuration's random scenes.

A scene is a dict of float64 CPU tensors, one row per image (shapes in `render.py`), that
`physics.strong.render.Renderer` turns into images; `params` is the row-aligned table of
true parameters written next to the images. The samplers live with their scenes:
`substructure` (deeplense-model1, deeplense-common, superres) and `survey` (lsst,
lens-finding-64). All classes of a task share every parameter distribution that physics
allows, so a classifier cannot learn a shortcut.

Configurations:
- `deeplense-model1`: DeepLenseSim's "Model I" code as REFERENCE.md describes it: SIE + shear,
  Sersic source, classes no / sphere (25 point-mass subhalos) / vort (a line of 100 point
  masses), 150x150 at 0.05", Gaussian PSF 0.087", min-max scaled.
- `deeplense-common`: the same classes, lens and source distributions fitted to the public
  DeepLense Common Test I samples (flatter rings, all along x, a larger source, a 0.2" PSF,
  Poisson counts) and its substructure to the residuals a smooth lens leaves in them (lighter
  subhalos, heavier and longer vortices; each choice and its measurement in `substructure`);
  simulate.py's default for substructure.
- `deeplense-broad`: randomised (issue 26): lens, source (with clumps), PSF, Poisson counts and
  substructure (number of subhalos, their mass function's slope, the vortex mass) drawn per image
  over ranges that span deeplense-model1, deeplense-common and beyond (`substructure.BROAD_*`), so
  a model trained on it cannot lean on one generator's choices.
- `lsst`: grizy 41x41 at 0.2", seeing 0.6-0.9" (Moffat), 30-100% of LSST's 10-year depth, lens
  galaxies with their own light and arcs resolved beyond the seeing; non-lenses include rings,
  spirals, mergers and close pairs; both classes get stars, blends, faint deflectors and masked
  areas (NaN or 0) alike.
- `lens-finding-64`: the lsst scenes in gri, 64x64, at 2-30% of the 10-year depth (noise as
  visible after scaling as in the public DeepLense samples), each channel min-max scaled.
- `superres`: Model I scenes (all three classes) at 150x150 / 0.05" (HR) and 75x75 / 0.1"
  with a wider PSF and more noise (LR).
"""
from __future__ import annotations

from dataclasses import dataclass, field

from physics.strong.substructure import BROAD_PSF_FWHM, COMMON_PSF_FWHM, sample_broad, sample_common, sample_model1
from physics.strong.survey import sample_survey


@dataclass(frozen=True)
class ImageConfig:
    name: str
    task: str                      # lens | substructure | superres
    classes: tuple                 # class names, label = index
    bands: tuple                   # band names
    size: int                      # pixels per side
    pixel_scale: float             # arcsec
    supersample: int               # sub-pixels per pixel side for ray shooting
    psf: str                       # gaussian | moffat
    psf_fwhm: tuple                # arcsec, (lo, hi) drawn per image and band
    scaling: str                   # minmax (per image) | minmax-channel | flux (zero point 27)
    dtype: str                     # numpy dtype of written images
    folders: tuple = ()            # class folder names in the npy / fits layouts
    doc: str = ""
    lr: dict = field(default_factory=dict)  # superres: low-resolution size, pixel scale, PSF, noise
    depth: tuple = (1.0, 1.0)      # survey: exposure / LSST 10-year stack, (lo, hi) log-uniform per image
    negatives: str = "sky"         # survey: the non-lens mix (physics.strong.survey.NONLENS_MIXES)

    def band_list(self, bands=None):
        """The requested bands (default all); unknown ones raise ValueError."""
        if bands is None:
            return self.bands
        missing = [b for b in bands if b not in self.bands]
        if missing or not bands:
            raise ValueError(f"config {self.name} has bands {','.join(self.bands)}; "
                             f"cannot make {','.join(missing) or 'an empty band list'}")
        return tuple(bands)


CONFIGS = {c.name: c for c in [
    ImageConfig("deeplense-model1", "substructure", ("no", "sphere", "vort"), ("vis",), 150, 0.05, 1,
                "gaussian", (0.087, 0.087), "minmax", "float64", ("no", "sphere", "vort"),
                "DeepLense Model I: 150x150 at 0.05\", no / sphere / vort, min-max scaled float64"),
    ImageConfig("deeplense-common", "substructure", ("no", "sphere", "vort"), ("vis",), 150, 0.05, 1,
                "gaussian", COMMON_PSF_FWHM, "minmax", "float64", ("no", "sphere", "vort"),
                "like the public DeepLense Common Test I set (flatter rings, one orientation, Poisson counts): "
                "150x150 at 0.05\", no / sphere / vort, min-max scaled float64"),
    ImageConfig("deeplense-broad", "substructure", ("no", "sphere", "vort"), ("vis",), 150, 0.05, 1,
                "gaussian", BROAD_PSF_FWHM, "minmax", "float64", ("no", "sphere", "vort"),
                "randomised: lens, source, PSF, counts and substructure spanning deeplense-model1, deeplense-common "
                "and beyond (issue 26), 150x150 at 0.05\", min-max scaled float64"),
    ImageConfig("lsst", "lens", ("nonlens", "lens"), ("g", "r", "i", "z", "y"), 41, 0.2, 3,
                "moffat", (0.6, 0.9), "flux", "float32", ("nonlenses", "lenses"),
                "LSST-like grizy 41x41 at 0.2\", flux at zero point 27", depth=(0.3, 1.0)),
    ImageConfig("lens-finding-64", "lens", ("nonlens", "lens"), ("g", "r", "i"), 64, 0.2, 3,
                "moffat", (0.6, 0.9), "minmax-channel", "float32", ("nonlenses", "lenses"),
                "DeepLense lens-finding-like gri 64x64, each channel min-max scaled", depth=(0.02, 0.3)),
    ImageConfig("superres", "superres", ("no", "sphere", "vort"), ("vis",), 150, 0.05, 2,
                "gaussian", (0.087, 0.087), "minmax", "float32", ("HR",),
                "Model I scenes: HR 150x150 at 0.05\", LR 75x75 at 0.1\"",
                lr=dict(size=75, pixel_scale=0.1, psf_fwhm=(0.15, 0.25), noise_factor=2.0)),
]}


SAMPLERS = {"deeplense-model1": sample_model1, "superres": sample_model1, "deeplense-common": sample_common,
            "deeplense-broad": sample_broad,
            "lsst": sample_survey, "lens-finding-64": sample_survey}


def sample(cfg, labels, gen):
    """Scene and parameter table for `labels` (LongTensor of class indices)."""
    return SAMPLERS[cfg.name](cfg, labels, gen)
