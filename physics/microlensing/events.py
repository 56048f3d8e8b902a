"""Microlensing events (flat, PSPL, binary) and non-lensing variables on a Roman-like season.

No shortcuts between classes:
- every star (source magnitude, blending) comes from one distribution, whatever its class;
  flat events are the same stars with no lensing;
- PSPL and binary events draw t0, tE, u0 and the source radius rho from the same
  distributions (the preset's u0 range applies to both lensed classes) and pass the same
  detectability cut; single-lens events have finite sources too (ESPL), so a rounded peak
  where u0 ~ rho is no sign of a binary;
- the noise model and missing epochs are the same for all classes;
- flat stars and variables are the stars of detected single-lens events (drawn and cut as a
  PSPL event is, then kept without lensing), so a faint or blended baseline is no sign of a
  lensing event where the detectability cut favours bright sources (the survey population
  reaches 26 mag and 1% source flux);
- a variable (`physics/microlensing/variables.py`) passes the same cut as a lensing event
  (>= min_epochs epochs whose signal exceeds min_snr sigma).

Populations (`POPULATIONS`): `survey` (the default) draws lensing events as a survey records
them, `thesis` the seed's narrow table (tE 5-30 d, t0 inside the season, 18-24 mag).

Randomness is per block of `BLOCK_SIZE` rows, seeded by (seed, block index), so a block's
rows do not depend on how blocks are spread over workers or shards.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np

from physics.microlensing.binary import AdaptiveBinaryLightCurve, AdaptiveSettings, make_vbbl
from physics.microlensing.single import espl_magnification
from physics.microlensing import context, variables
from physics.microlensing.survey import NoiseModel, Season, lensing_snr, min_detectable_magnification, observe

CLASS_NAMES = ("flat", "pspl", "binary", "variable")
FLAT, PSPL, BINARY, VARIABLE = 0, 1, 2, 3
STAR_FIELDS = ("m_source", "fs", "m_base")
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
    # variables only (NaN otherwise; meaning per kind in physics/microlensing/variables.py):
    ("var_kind", "f8"),  # index into variables.KINDS
    ("period", "f8"),    # days
    ("amplitude", "f8"),
    ("phase", "f8"),     # days
    ("rise", "f8"),
    ("decay", "f8"),
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
class Population:
    """How lensing events and their stars are drawn (shared by every class).

    tE: bounds, days; with tE_median a log-normal (median, sigma in dex) truncated to the bounds,
    plus a share `short_fraction` log-uniform over `short_tE`; without, log-uniform over tE.
    t0_fraction: of the season, uniform (outside [0, 1]: the peak is not observed). u0: uniform;
    None = the binary preset's range. rho: log-uniform, Einstein radii, at tE = 20 d where
    rho_scales (rho = theta_* / theta_E ~ 1 / tE), capped at rho_max. m_source: AB mag, uniform.
    fs: source flux fraction, uniform or log-uniform (fs_log).
    """

    name: str
    tE: tuple[float, float]
    tE_median: float | None
    tE_sigma_dex: float
    short_fraction: float
    short_tE: tuple[float, float]
    t0_fraction: tuple[float, float]
    u0: tuple[float, float] | None
    rho: tuple[float, float]
    rho_scales: bool
    rho_max: float
    m_source: tuple[float, float]
    fs: tuple[float, float]
    fs_log: bool
    doc: str


POPULATIONS = {p.name: p for p in [
    Population("survey", tE=(0.1, 300.0), tE_median=20.0, tE_sigma_dex=0.5, short_fraction=0.1,
               short_tE=(0.1, 2.0), t0_fraction=(-0.5, 1.5), u0=(1e-3, 1.5), rho=(1e-3, 0.05),
               rho_scales=True, rho_max=0.5, m_source=(18.0, 26.0), fs=(0.01, 1.0), fs_log=True,
               doc="As a bulge survey records events: tE log-normal around 20 d (sigma 0.5 dex; OGLE-IV, "
                   "Mroz et al. 2017, 2019) within 0.1-300 d, plus 10% log-uniform over 0.1-2 d (free-floating "
                   "planets and brown dwarfs; more than the sky's few per cent, so every tE bin is trained and "
                   "measured); t0 anywhere from half a season before to half a season after the window (events "
                   "caught on the rise or the tail; the detectability cut keeps those that show); u0 up to 1.5 "
                   "for every preset; rho ~ 1/tE (0.001-0.05 at 20 d, at most 0.5: short events show their "
                   "finite source); sources 18-26 mag with 1-100% source flux (log-uniform): faint and "
                   "strongly blended."),
    Population("thesis", tE=(5.0, 30.0), tE_median=None, tE_sigma_dex=0.0, short_fraction=0.0,
               short_tE=(5.0, 30.0), t0_fraction=(0.1, 0.9), u0=None, rho=(1e-3, 0.05), rho_scales=False,
               rho_max=0.05, m_source=(18.0, 24.0), fs=(0.1, 1.0), fs_log=False,
               doc="The seed's table (seed 004): tE 5-30 d log-uniform, t0 10-90% of the season, u0 from the "
                   "binary preset, rho 0.001-0.05, sources 18-24 mag, 10-100% source flux."),
]}


@dataclass(frozen=True)
class EventConfig:
    """Everything that defines a simulated data set besides the counts and the seed."""

    preset: str = "baseline"
    population: str = "survey"
    season: Season = field(default_factory=Season)
    noise: NoiseModel = field(default_factory=NoiseModel)
    min_snr: float = 5.0     # detectability: at least `min_epochs` observed epochs whose
    min_epochs: int = 3      # lensing signal exceeds `min_snr` sigma (same for PSPL and binary)
    oversample: float = 1.0  # candidates drawn per still-missing event in each round of the cut
    binary_tol: float = 1e-3  # VBBinaryLensing Tol = RelTol for the adaptive binary curves
    context_days: float = context.CONTEXT_DAYS  # the star's daily curve over this span around the season; 0: none

    def __post_init__(self):
        if self.preset not in PRESETS:
            raise ValueError(f"unknown binary preset {self.preset!r}; choose from {', '.join(PRESETS)}")
        if self.population not in POPULATIONS:
            raise ValueError(f"unknown population {self.population!r}; choose from {', '.join(POPULATIONS)}")
        if not self.oversample >= 1.0:
            raise ValueError(f"oversample must be >= 1, got {self.oversample}")
        if self.context_days and self.context_days < self.season.length_days:
            raise ValueError(f"context_days must be 0 or at least the season ({self.season.length_days:g} d), "
                             f"got {self.context_days:g}")

    def to_dict(self) -> dict:
        return asdict(self)


def _uniform(rng, lo_hi, n):
    return rng.uniform(lo_hi[0], lo_hi[1], n)


def _log_uniform(rng, lo_hi, n):
    return np.exp(rng.uniform(np.log(lo_hi[0]), np.log(lo_hi[1]), n))


def draw_stars(rng, cfg: EventConfig, n: int):
    """Source magnitude, blending and baseline magnitude for n stars (any class)."""
    pop = POPULATIONS[cfg.population]
    m_source = _uniform(rng, pop.m_source, n)
    fs = (_log_uniform if pop.fs_log else _uniform)(rng, pop.fs, n)
    return m_source, fs, m_source + 2.5 * np.log10(fs)  # blend light makes the baseline brighter


def draw_tE(rng, pop: Population, n: int) -> np.ndarray:
    """(n,) Einstein times, days, of the population (see Population)."""
    if pop.tE_median is None:
        return _log_uniform(rng, pop.tE, n)
    out = np.empty(n)
    short = rng.random(n) < pop.short_fraction
    out[short] = _log_uniform(rng, pop.short_tE, int(short.sum()))
    todo = np.flatnonzero(~short)
    lo, hi = np.log10(pop.tE)
    while len(todo):  # truncated log-normal: redraw what falls outside the bounds
        x = rng.normal(np.log10(pop.tE_median), pop.tE_sigma_dex, len(todo))
        ok = (x >= lo) & (x <= hi)
        out[todo[ok]] = 10.0 ** x[ok]
        todo = todo[~ok]
    return out


def draw_lensed(rng, cfg: EventConfig, n: int, binary: bool):
    """Parameters of n lensed events; the shared ones come first, identically for both classes."""
    preset, pop = PRESETS[cfg.preset], POPULATIONS[cfg.population]
    p = np.full(n, np.nan, dtype=PARAMS_DTYPE)
    p["m_source"], p["fs"], p["m_base"] = draw_stars(rng, cfg, n)
    p["t0"] = _uniform(rng, pop.t0_fraction, n) * cfg.season.length_days
    p["tE"] = draw_tE(rng, pop, n)
    p["u0"] = _uniform(rng, pop.u0 or preset.u0, n)
    rho = _log_uniform(rng, pop.rho, n)
    p["rho"] = np.minimum(rho * 20.0 / p["tE"], pop.rho_max) if pop.rho_scales else rho
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


def detectable_variable(cfg: EventConfig, params, flux_factor):
    """The same cut for variables, whose source may fade: >= min_epochs epochs where the
    source's flux change |F_s (V - 1)| exceeds min_snr sigma."""
    snr = np.abs(lensing_snr(cfg.noise, params["m_base"], params["fs"], flux_factor))
    return (snr >= cfg.min_snr).sum(axis=1) >= cfg.min_epochs


def out_of_reach(params, t_lo: float, t_hi: float):
    """Binary candidates whose trajectory stays farther than s + 1/s + 3 Einstein radii from the
    lens's centre of mass over [t_lo, t_hi]: magnification ~1 (no caustic is that far), so no
    binary curve needs computing to know they fail the cut."""
    gap = np.maximum(np.maximum(t_lo - params["t0"], params["t0"] - t_hi), 0.0) / params["tE"]
    return np.hypot(gap, params["u0"]) > params["s"] + 1.0 / params["s"] + 3.0


class EventSimulator:
    """Simulates blocks of events; one instance per process (it owns a VBBinaryLensing)."""

    def __init__(self, cfg: EventConfig, adaptive: AdaptiveSettings = AdaptiveSettings()):
        self.cfg = cfg
        self.t = cfg.season.times()  # (T,) days
        self.binary_curve = AdaptiveBinaryLightCurve(self.t, cfg.season.dt, cfg.binary_tol, adaptive)
        self.t_context = (context.context_times(cfg.season.length_days, cfg.context_days) if cfg.context_days
                          else None)
        self._vbbl = None

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
                far = out_of_reach(cand, self.t[0], self.t[-1])
                for k in range(len(cand)):
                    if len(take) == len(todo):
                        break
                    if far[k]:
                        continue
                    a = self.binary_magnification(cand[k:k + 1])
                    if detectable(cfg, cand[k:k + 1], a)[0]:
                        take.append(k)
                        amp.append(a[0])
                cand, amp = cand[take], np.array(amp, dtype=np.float32).reshape(len(take), len(self.t))
            else:
                cand = cand[~self._below_cut_at_edge(cand)]
                amp = espl_magnification(self.t, cand["t0"][:, None], cand["tE"][:, None], cand["u0"][:, None],
                                         cand["rho"][:, None], dtype=np.float32)
                ok = np.flatnonzero(detectable(cfg, cand, amp))[:len(todo)]
                cand, amp = cand[ok], amp[ok]
            done = todo[:len(cand)]
            params[done], magnification[done] = cand, amp
            todo = todo[len(cand):]
        return params, magnification

    def _below_cut_at_edge(self, cand):
        """Single-lens candidates whose peak lies outside the season and whose magnification at
        the nearest edge is already below the detection threshold: a single lens's magnification
        falls monotonically away from t0, so no epoch can pass the cut (the same decision the
        full curve gives, without computing it)."""
        edge = np.clip(cand["t0"], self.t[0], self.t[-1])
        outside = edge != cand["t0"]
        amp = espl_magnification(edge[outside, None], cand["t0"][outside, None], cand["tE"][outside, None],
                                 cand["u0"][outside, None], cand["rho"][outside, None], dtype=np.float32)
        threshold = min_detectable_magnification(self.cfg.noise, cand["m_base"][outside], cand["fs"][outside],
                                                 self.cfg.min_snr).astype(np.float32)
        hopeless = np.zeros(len(cand), bool)
        hopeless[outside] = amp[:, 0] < threshold
        return hopeless

    def _variable(self, rng, star, tries: int = 100):
        """(params, flux factor (T,), the drawn variable) of a variable on `star` that passes the
        cut; the star is redrawn (as a flat star is) where `tries` variables of its kind all stay
        undetected."""
        cfg = self.cfg
        kind = int(rng.integers(len(variables.KINDS)))
        row = np.array([star], dtype=PARAMS_DTYPE)
        while True:
            for _ in range(tries):
                drawn = variables.draw(rng, kind, cfg.season.length_days)
                factor = variables.flux_factor(self.t, drawn)
                if detectable_variable(cfg, row, factor[None])[0]:
                    for name in variables.VARIABLE_FIELDS:
                        row[name] = drawn[name]
                    return row[0], factor.astype(np.float32), drawn
            stars = self._lensed(rng, 1, False)[0]
            for name in STAR_FIELDS:
                row[name] = stars[name]

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
        for cls in (PSPL, BINARY):
            rows = np.flatnonzero(labels == cls)
            if len(rows):
                params[rows], magnification[rows] = self._lensed(rng, len(rows), cls == BINARY)
        unlensed = np.flatnonzero((labels == FLAT) | (labels == VARIABLE))
        if len(unlensed):
            stars = self._lensed(rng, len(unlensed), False)[0]
            for name in STAR_FIELDS:
                params[name][unlensed] = stars[name]
        drawn = {}
        for i in np.flatnonzero(labels == VARIABLE):
            params[i], magnification[i], drawn[i] = self._variable(rng, params[i])
        mag, mag_err = observe(rng, cfg.noise, params["m_base"], params["fs"], magnification, observed)
        out = {"mag": mag, "mag_err": mag_err, "magnification": magnification, "params": params}
        if self.t_context is not None:
            out["context_mag"], out["context_err"] = self._context(seed, block_index, labels, params, drawn)
        return out

    def _context(self, seed, block_index, labels, params, drawn):
        """The block's daily curves over the context (physics/microlensing/context.py), from their own
        random stream, so the season's rows are the same with or without it."""
        cfg, t = self.cfg, self.t_context
        rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(9, block_index)))
        factor = np.ones((len(labels), len(t)))
        lensed = np.flatnonzero((labels == PSPL) | (labels == BINARY))
        if len(lensed):
            p = params[lensed]
            factor[lensed] = espl_magnification(t, p["t0"][:, None], p["tE"][:, None], p["u0"][:, None],
                                                p["rho"][:, None])
        for i in np.flatnonzero(labels == BINARY):
            if self._vbbl is None:
                self._vbbl = make_vbbl(cfg.binary_tol, cfg.binary_tol)
            factor[i] = context.binary_context(self._vbbl, t, params[i], factor[i])
        for i, p in drawn.items():
            factor[i] = variables.flux_factor(t, variables.extend(rng, p, t[0], t[-1], cfg.season.length_days))
        return observe(rng, context.day_noise(cfg.noise, cfg.season), params["m_base"], params["fs"], factor,
                       np.ones(factor.shape, bool))


def shuffled_labels(seed: int, n_flat: int, n_pspl: int, n_binary: int, n_variable: int = 0):
    """(N,) int8 class labels in a seeded random order: rows are never grouped by class."""
    labels = np.repeat(np.array([FLAT, PSPL, BINARY, VARIABLE], dtype=np.int8),
                       [n_flat, n_pspl, n_binary, n_variable])
    rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(0,)))
    return labels[rng.permutation(len(labels))]
