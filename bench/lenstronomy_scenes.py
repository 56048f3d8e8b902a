"""The lenstronomy side of bench/bench_lens_simulate.py: our scene rows (physics.strong.scenes)
converted to lenstronomy ImageModels and rendered with the same photometry and noise model.
lenstronomy is a benchmark- and test-only dependency, imported only when a case is built."""
from __future__ import annotations

import math
import time

import numpy as np
import torch

from physics.strong import light, scenes
from physics.strong.instrument import LSST_BANDS, moffat_psf

def have_lenstronomy():
    try:
        __import__("lenstronomy")  # benchmark-only dependency
    except ImportError:
        return False
    return True


def _f(t):
    return [float(v) for v in t]


class LenstronomyCase:
    """lenstronomy ImageModels for a case's scene layout, and the scene rows converted to its
    keyword arguments (done before timing). lsst: one ImageModel per band, its PSF replaced
    per image (each image and band has its own Moffat kernel), as lenstronomy's multi-band
    classes do; the ring / spiral / arc look-alikes are not modelled (absent from lenses)."""

    def __init__(self, case, config, scene):
        from lenstronomy.Data.imaging_data import ImageData
        from lenstronomy.Data.psf import PSF
        from lenstronomy.ImSim.image_model import ImageModel
        from lenstronomy.LensModel.lens_model import LensModel
        from lenstronomy.LightModel.light_model import LightModel
        self.PSF = PSF
        self.case = case
        self.psf_s = 0.0  # time spent replacing the PSF (lsst: per image and band)
        cfg = self.cfg = scenes.CONFIGS[config]
        n, size, ps = len(scene["theta_e"]), cfg.size, cfg.pixel_scale
        corner = -(size - 1) / 2 * ps
        data = ImageData(image_data=np.zeros((size, size)), transform_pix2angle=np.diag([ps, ps]),
                         ra_at_xy_0=corner, dec_at_xy_0=corner)
        numerics = {"supersampling_factor": cfg.supersample}
        s = {k: v.double() for k, v in scene.items()}
        mass_name = "SIE" if float(s["core"].abs().max()) == 0 else "NIE"
        n_pm = int((s["pm_theta_e"] > 0).sum(1).max()) if s["pm_theta_e"].shape[1] else 0
        self.lens_model = LensModel([mass_name, "SHEAR"] + ["POINT_MASS"] * n_pm)
        self.kwargs = []
        if cfg.name == "deeplense-model1":
            psf = PSF(psf_type="GAUSSIAN", fwhm=cfg.psf_fwhm[0], pixel_size=ps)
            self.models = [ImageModel(data, psf, lens_model_class=self.lens_model,
                                      source_model_class=LightModel(["SERSIC_ELLIPSE"]), kwargs_numerics=numerics)]
            amp = light.sersic_intensity_at_re(s["src_flux"][:, 0], s["src_r_e"], s["src_n"])
            for i in range(n):
                self.kwargs.append(dict(
                    lens=self._lens_kwargs(s, i, mass_name, n_pm),
                    source=[[dict(amp=float(amp[i]), R_sersic=float(s["src_r_e"][i]), n_sersic=float(s["src_n"][i]),
                                  e1=float(s["src_e1"][i]), e2=float(s["src_e2"][i]),
                                  center_x=float(s["src_x"][i]), center_y=float(s["src_y"][i]))]],
                    peak_snr=float(s["peak_snr"][i])))
        else:
            n_bands, n_clumps, n_field = len(cfg.bands), s["clump_frac"].shape[1], s["field_flux"].shape[1]
            # our PSF kernels: the same (B, C, k, k) Moffat kernels the renderer draws
            kernels = moffat_kernels(s, cfg, n_bands).numpy()
            placeholder = PSF(psf_type="PIXEL", kernel_point_source=kernels[0, 0])
            self.models = [ImageModel(data, placeholder, lens_model_class=self.lens_model,
                                      source_model_class=LightModel(["SERSIC_ELLIPSE"] + ["GAUSSIAN"] * n_clumps),
                                      lens_light_model_class=LightModel(["SERSIC_ELLIPSE"] * (1 + n_field)),
                                      kwargs_numerics=numerics) for _ in range(n_bands)]
            frac = s["clump_frac"]
            src_amp = light.sersic_intensity_at_re((1 - frac.sum(1))[:, None] * s["src_flux"], s["src_r_e"][:, None],
                                                   s["src_n"][:, None])                         # (B, C)
            ll_amp = light.sersic_intensity_at_re(s["ll_flux"], s["ll_r_e"][:, None], s["ll_n"][:, None])  # (B, C)
            f_amp = light.sersic_intensity_at_re(s["field_flux"], s["field_r_e"][..., None],
                                                 s["field_n"][..., None])                       # (B, F, C)
            for i in range(n):
                source, lens_light = [], []
                for c in range(n_bands):
                    src = [dict(amp=float(src_amp[i, c]), R_sersic=float(s["src_r_e"][i]), n_sersic=float(s["src_n"][i]),
                                e1=float(s["src_e1"][i]), e2=float(s["src_e2"][i]),
                                center_x=float(s["src_x"][i]), center_y=float(s["src_y"][i]))]
                    src += [dict(amp=float(frac[i, j] * s["src_flux"][i, c]), sigma=float(s["clump_sigma"][i, j]),
                                 center_x=float(s["clump_x"][i, j]), center_y=float(s["clump_y"][i, j]))
                            for j in range(n_clumps)]
                    ll = [dict(amp=float(ll_amp[i, c]), R_sersic=float(s["ll_r_e"][i]), n_sersic=float(s["ll_n"][i]),
                               e1=float(s["ll_e1"][i]), e2=float(s["ll_e2"][i]),
                               center_x=float(s["lens_x"][i]), center_y=float(s["lens_y"][i]))]
                    ll += [dict(amp=float(f_amp[i, j, c]), R_sersic=float(s["field_r_e"][i, j]),
                                n_sersic=float(s["field_n"][i, j]), e1=float(s["field_e1"][i, j]),
                                e2=float(s["field_e2"][i, j]), center_x=float(s["field_x"][i, j]),
                                center_y=float(s["field_y"][i, j])) for j in range(n_field)]
                    source.append(src)
                    lens_light.append(ll)
                self.kwargs.append(dict(lens=self._lens_kwargs(s, i, mass_name, n_pm), source=source,
                                        lens_light=lens_light, kernels=kernels[i]))
            bands = [LSST_BANDS[b] for b in cfg.bands]
            self.gain = np.array([b.electrons_per_flux() for b in bands])[:, None, None]
            self.sky = np.array([b.sky_electrons(ps) for b in bands])[:, None, None]
            self.read_sigma = np.sqrt(np.array([b.read_noise ** 2 * b.n_exposures for b in bands]))[:, None, None]

    @staticmethod
    def _lens_kwargs(s, i, mass_name, n_pm):
        mass = dict(theta_E=float(s["theta_e"][i]), e1=float(s["lens_e1"][i]), e2=float(s["lens_e2"][i]),
                    center_x=float(s["lens_x"][i]), center_y=float(s["lens_y"][i]))
        if mass_name == "NIE":
            mass["s_scale"] = float(s["core"][i])
        kw = [mass, dict(gamma1=float(s["gamma1"][i]), gamma2=float(s["gamma2"][i]),
                         ra_0=float(s["lens_x"][i]), dec_0=float(s["lens_y"][i]))]
        order = torch.argsort(s["pm_theta_e"][i], descending=True)[:n_pm]  # the present masses (others are 0)
        kw += [dict(theta_E=float(s["pm_theta_e"][i, k]), center_x=float(s["pm_x"][i, k]),
                    center_y=float(s["pm_y"][i, k])) for k in order]
        return kw

    def noise_free(self, i):
        """(C, H, W) noise-free flux per pixel of scene row i."""
        kw = self.kwargs[i]
        if self.cfg.name == "deeplense-model1":
            return self.models[0].image(kw["lens"], kw["source"][0])[None]
        out = []
        for c, model in enumerate(self.models):
            t = time.perf_counter()
            model.update_psf(self.PSF(psf_type="PIXEL", kernel_point_source=kw["kernels"][c]))
            self.psf_s += time.perf_counter() - t
            out.append(model.image(kw["lens"], kw["source"][c], kw["lens_light"][c]))
        return np.stack(out)

    def render(self, i, rng):
        """A noisy, scaled image as ours makes it (same noise model, in numpy)."""
        img = self.noise_free(i)
        if self.cfg.name == "deeplense-model1":
            electrons = img / img.max() * 5e4
            noisy = _poisson(electrons, rng) + 5e4 / self.kwargs[i]["peak_snr"] * rng.standard_normal(img.shape)
            return (noisy - noisy.min()) / max(noisy.max() - noisy.min(), 1e-30)
        electrons = img * self.gain
        counts = _poisson(electrons + self.sky, rng) + self.read_sigma * rng.standard_normal(img.shape)
        return (counts - self.sky) / self.gain


def moffat_kernels(scene, cfg, n_bands):
    """(B, C, k, k) Moffat kernels of each image and band, of the size the renderer uses
    (2.5 x the configuration's widest FWHM)."""
    fwhm_px = scene["psf_fwhm"][:, :n_bands].double() / cfg.pixel_scale
    size = int(2 * math.ceil(2.5 * max(cfg.psf_fwhm) / cfg.pixel_scale) + 1)
    return moffat_psf(fwhm_px, scene["psf_beta"][:, :n_bands].double(), size)


def _poisson(lam, rng):
    """Poisson deviates, exact below 100 expected counts and normal above (as ours)."""
    lam = np.clip(lam, 0, None)
    counts = lam + np.sqrt(lam) * rng.standard_normal(lam.shape)
    small = lam < 100
    counts[small] = rng.poisson(lam[small])
    return counts


