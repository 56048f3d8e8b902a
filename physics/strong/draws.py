"""Random draws shared by the scene samplers: float64 tensors of a given shape from a torch.Generator."""
from __future__ import annotations

import math

import torch


def uniform(gen, shape, lo, hi):
    return lo + (hi - lo) * torch.rand(shape, generator=gen, dtype=torch.float64)


def log_uniform(gen, shape, lo, hi):
    return torch.exp(uniform(gen, shape, math.log(lo), math.log(hi)))


def power_law(gen, shape, lo, hi, slope):
    """Samples of p(m) ~ m^slope on [lo, hi] (slope != -1), by inverting the CDF."""
    a = slope + 1
    u = torch.rand(shape, generator=gen, dtype=torch.float64)
    return (lo ** a + u * (hi ** a - lo ** a)) ** (1 / a)


def truncated_log_normal(gen, n, median, sigma, lo, hi):
    """Samples of a log-normal (median, sigma of ln x) restricted to [lo, hi], by inverting the CDF."""
    cdf = [0.5 * (1 + math.erf(math.log(v / median) / (sigma * math.sqrt(2)))) for v in (lo, hi)]
    return median * torch.exp(sigma * torch.special.ndtri(uniform(gen, n, *cdf)))
