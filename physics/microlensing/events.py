"""Microlensing events of three classes (flat, PSPL, binary) on a Roman-like season.

No shortcuts between classes:
- every star (source magnitude, blending) comes from one distribution, whatever its class;
  flat events are the same stars with no lensing;
- PSPL and binary events draw t0, tE, u0 and the source radius rho from the same
  distributions (the preset's u0 range applies to both lensed classes) and pass the same
  detectability cut; single-lens events have finite sources too (ESPL), so a rounded peak
  where u0 ~ rho is no sign of a binary;
- the noise model and missing epochs are the same for all classes.

Randomness is per block of `BLOCK_SIZE` rows, seeded by (seed, block index), so a block's
rows do not depend on how blocks are spread over workers or shards.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np

from physics.microlensing.binary import AdaptiveBinaryLightCurve, AdaptiveSettings
from physics.microlensing.single import espl_magnification
from physics.microlensing.survey import NoiseModel, Season, min_detectable_magnification, observe

CLASS_NAMES = ("flat", "pspl", "binary")
FLAT, PSPL, BINARY = 0, 1, 2
BLOCK_SIZE = 64  # rows per random-number block (fixed: part of the output's definition)

PARAMS_DTYPE = np.dtype([
    ("t0", "f8"),        # days since season start (closest approach; binary: to the centre of mass)
    ("tE", "f8"),        # Einstein time, days
    ("u0", "f8"),        # impact parameter, Einstein radii
    ("alpha", "f8"),     # trajectory angle, radians (binary only)
    ("s", "f8"),         # lens separation, Einstein radii (binary only)
    ("q", "f8"),         # mass ratio m2/m1 (binary only)
    ("rho", "f8"),       # source radius, Einstein radii (uniform disk; single lens: ESPL)
    ("m_source", "f8"),  # source magnitude, AB W146
    ("fs", "f8"),        # source flux fraction at baseline, F_s / (F_s + F_blend)
    ("m_base", "f8"),    # baseline magnitude of source + blend
])


@dataclass(frozen=True)
class BinaryPreset:
    """Ranges of the lens configuration; u0 applies to PSPL and binary events alike."""

    name: str
    s: tuple[float, float]
    q: tuple[float, float]
    u0: tuple[float, float]
    doc: str


PRESETS = {p.name: p for p in [
    BinaryPreset("baseline", s=(0.3, 3.0), q=(1e-4, 1.0), u0=(1e-3, 1.0),
                 doc="The full parameter space: planets to equal-mass binaries, close to wide, "
                     "u0 up to 1. Many binaries look like PSPL; that ambiguity is real."),
    BinaryPreset("distinct", s=(0.8, 1.2), q=(0.1, 1.0), u0=(1e-3, 0.3),
                 doc="Resonant near-equal-mass binaries with large caustics, u0 <= 0.3 for both "
                     "lensed classes: most binary trajectories cross a caustic. Unlike the seed, "
                     "no binary-only caustic-crossing cut is applied, since a cut on one class "
                     "would bias its u0 and t0 against PSPL."),
    BinaryPreset("planetary", s=(0.6, 1.6), q=(1e-4, 1e-2), u0=(1e-3, 0.3),
                 doc="Planetary mass ratios near the Einstein ring (the lensing zone), u0 <= 0.3: "
                     "short perturbations on a PSPL-like curve."),
    BinaryPreset("stellar", s=(0.3, 3.0), q=(0.1, 1.0), u0=(1e-3, 0.5),
                 doc="Stellar binaries (q >= 0.1), close to wide, u0 <= 0.5."),
]}


@dataclass(frozen=True)
class EventConfig:
    """Everything that defines a simulated data set besides the counts and the seed."""

    preset: str = "baseline"
    season: Season = field(default_factory=Season)
    noise: NoiseModel = field(default_factory=NoiseModel)
    tE: tuple[float, float] = (5.0, 30.0)          # days, log-uniform
    t0_fraction: tuple[float, float] = (0.1, 0.9)  # of the season, uniform
    rho: tuple[float, float] = (1e-3, 0.05)        # Einstein radii, log-uniform
    m_source: tuple[float, float] = (18.0, 24.0)   # AB mag, uniform
    fs: tuple[float, float] = (0.1, 1.0)           # uniform
    min_snr: float = 5.0     # detectability: at least `min_epochs` observed epochs whose
    min_epochs: int = 3      # lensing signal exceeds `min_snr` sigma (same for PSPL and binary)
    oversample: float = 1.0  # candidates drawn per still-missing event in each round of the cut
    binary_tol: float = 1e-3  # VBBinaryLensing Tol = RelTol for the adaptive binary curves

    def __post_init__(self):
        if self.preset not in PRESETS:
            raise ValueError(f"unknown binary preset {self.preset!r}; choose from {', '.join(PRESETS)}")
        if not self.oversample >= 1.0:
            raise ValueError(f"oversample must be >= 1, got {self.oversample}")

    def to_dict(self) -> dict:
        return asdict(self)


def _uniform(rng, lo_hi, n):
    return rng.uniform(lo_hi[0], lo_hi[1], n)


def _log_uniform(rng, lo_hi, n):
    return np.exp(rng.uniform(np.log(lo_hi[0]), np.log(lo_hi[1]), n))


def draw_stars(rng, cfg: EventConfig, n: int):
    """Source magnitude, blending and baseline magnitude for n stars (any class)."""
    m_source = _uniform(rng, cfg.m_source, n)
    fs = _uniform(rng, cfg.fs, n)
    return m_source, fs, m_source + 2.5 * np.log10(fs)  # blend light makes the baseline brighter


def draw_lensed(rng, cfg: EventConfig, n: int, binary: bool):
    """Parameters of n lensed events; the shared ones come first, identically for both classes."""
    preset = PRESETS[cfg.preset]
    p = np.full(n, np.nan, dtype=PARAMS_DTYPE)
    p["m_source"], p["fs"], p["m_base"] = draw_stars(rng, cfg, n)
    p["t0"] = _uniform(rng, cfg.t0_fraction, n) * cfg.season.length_days
    p["tE"] = _log_uniform(rng, cfg.tE, n)
    p["u0"] = _uniform(rng, preset.u0, n)
    p["rho"] = _log_uniform(rng, cfg.rho, n)
    if binary:
        p["alpha"] = rng.uniform(0.0, 2.0 * np.pi, n)
        p["s"] = _log_uniform(rng, preset.s, n)
        p["q"] = _log_uniform(rng, preset.q, n)
    return p


def detectable(cfg: EventConfig, params, magnification):
    """The cut every lensed event must pass: >= min_epochs epochs of the nominal cadence with a
    lensing signal >= min_snr sigma. It ignores which epochs are missed at random (5%), so the
    same event passes or fails whichever row it lands in."""
    threshold = min_detectable_magnification(cfg.noise, params["m_base"], params["fs"], cfg.min_snr)
    return (magnification >= threshold[:, None].astype(magnification.dtype)).sum(axis=1) >= cfg.min_epochs


class EventSimulator:
    """Simulates blocks of events; one instance per process (it owns a VBBinaryLensing)."""

    def __init__(self, cfg: EventConfig, adaptive: AdaptiveSettings = AdaptiveSettings()):
        self.cfg = cfg
        self.t = cfg.season.times()  # (T,) days
        self.binary_curve = AdaptiveBinaryLightCurve(self.t, cfg.season.dt, cfg.binary_tol, adaptive)

    def binary_magnification(self, p):
        """(n, T) binary magnifications for a params array p, computed adaptively."""
        return np.stack([self.binary_curve(e["s"], e["q"], e["u0"], e["alpha"], e["rho"], e["tE"], e["t0"])
                         for e in p]) if len(p) else np.empty((0, len(self.t)))

    def _lensed(self, rng, n, binary):
        """Draw-simulate-cut rounds until n events pass; returns (params, magnification)."""
        cfg = self.cfg
        params = np.empty(n, dtype=PARAMS_DTYPE)
        magnification = np.empty((n, len(self.t)), dtype=np.float32)
        todo = np.arange(n)
        while len(todo):
            cand = draw_lensed(rng, cfg, int(np.ceil(len(todo) * cfg.oversample)), binary)
            if binary:
                # binaries are expensive: simulate candidates only until enough have passed
                take, amp = [], []
                for k in range(len(cand)):
                    if len(take) == len(todo):
                        break
                    a = self.binary_magnification(cand[k:k + 1])
                    if detectable(cfg, cand[k:k + 1], a)[0]:
                        take.append(k)
                        amp.append(a[0])
                cand, amp = cand[take], np.array(amp, dtype=np.float32).reshape(len(take), len(self.t))
            else:
                amp = espl_magnification(self.t, cand["t0"][:, None], cand["tE"][:, None], cand["u0"][:, None],
                                         cand["rho"][:, None], dtype=np.float32)
                ok = np.flatnonzero(detectable(cfg, cand, amp))[:len(todo)]
                cand, amp = cand[ok], amp[ok]
            done = todo[:len(cand)]
            params[done], magnification[done] = cand, amp
            todo = todo[len(cand):]
        return params, magnification

    def block(self, seed: int, block_index: int, labels):
        """Simulate one block: labels (n,) int -> dict of row-aligned arrays.

        Returns mag, mag_err, magnification (n, T) float32 and params (n,) PARAMS_DTYPE.
        """
        cfg = self.cfg
        labels = np.asarray(labels)
        n, T = len(labels), len(self.t)
        rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(1, block_index)))
        observed = rng.random((n, T), dtype=np.float32) >= cfg.season.missing_fraction
        params = np.full(n, np.nan, dtype=PARAMS_DTYPE)
        magnification = np.ones((n, T), dtype=np.float32)
        flat = np.flatnonzero(labels == FLAT)
        params["m_source"][flat], params["fs"][flat], params["m_base"][flat] = draw_stars(rng, cfg, len(flat))
        for cls in (PSPL, BINARY):
            rows = np.flatnonzero(labels == cls)
            if len(rows):
                params[rows], magnification[rows] = self._lensed(rng, len(rows), cls == BINARY)
        mag, mag_err = observe(rng, cfg.noise, params["m_base"], params["fs"], magnification, observed)
        return {"mag": mag, "mag_err": mag_err, "magnification": magnification,
                "params": params}


def shuffled_labels(seed: int, n_flat: int, n_pspl: int, n_binary: int):
    """(N,) int8 class labels in a seeded random order: rows are never grouped by class."""
    labels = np.repeat(np.array([FLAT, PSPL, BINARY], dtype=np.int8), [n_flat, n_pspl, n_binary])
    rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(0,)))
    return labels[rng.permutation(len(labels))]
