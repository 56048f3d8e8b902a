"""LensPINN: a substructure classifier that explains the image with a smooth lens first.

    model = create_model("lens_pinn", in_chans=1, n_classes=3, image_size=150, pixel_scale=0.05)
    out = model(images)   # images (B, C, H, W), per-image normalised (any affine scale)

What is physical (arcsec throughout, the simulator's own code and grid):
1. An encoder (timm backbone `encoder`; a ViT sees the batch resized to its native size)
   regresses the smooth lens, "lens_params" (B, 7) = [theta_e, e1, e2, gamma1, gamma2,
   center_x, center_y] (the simulator's `LENS_PARAM_NAMES` columns), squashed into physical
   ranges: theta_e 0.5-3", |e| < 0.5, |gamma| < 0.2, centre within 0.5" (starts as a
   theta_e = 1.4" lens at the centre). Optionally (`residual_field`) a small conv head adds a
   residual deflection (2, H, W), predicted at 1/8 resolution and upsampled, |alpha| < 0.1".
2. Deflection: SIE + external shear from `physics.strong.mass` (the functions the simulator
   renders with) on `physics.strong.instrument.pixel_grid`, plus the residual; the lens
   equation beta = theta - alpha maps every image pixel to the source plane.
3. Surface brightness is conserved along rays, I(theta) = S(beta(theta)), so every pixel is a
   sample of the source at beta. The source (B, C, S, S) on a regular grid of `source_fov`
   arcsec about the lens centre is the bilinear-weighted mean of the samples that land on
   each source pixel (a scatter-add of values and weights; 0 where none land). Re-lensing it,
   S(beta(theta)) by `grid_sample` (the exact transpose of the splat), gives "relensed"; the
   residual x - relensed is what the smooth lens does not explain: substructure.
4. A classifier (timm backbone `classifier`) reads [x, source resized to H x W, residual,
   (residual deflection / 0.1")] and gives "logits" and "log_probs" (binary: "logit", as in
   models/timm_classifier.py).
The sky level (the per-image median) is taken off before the splat and put back after
re-lensing, so source, relensed and residual follow any affine scaling of the input.

Unlike the seed's LensViT-PINN, which took a Linear layer's output for alpha, its mean for
theta_E and applied an SIS lens equation to pixel intensities (positions and brightness
mixed up), here alpha is a deflection in arcsec from a mass model, beta a position, and the
image brightness is carried to the source plane along the rays.
"""
from __future__ import annotations


import torch
import torch.nn as nn
import torch.nn.functional as F

from models import register
from models.timm_classifier import TimmClassifier, native_input_size
from physics.strong import mass
from physics.strong.instrument import pixel_grid

LENS_PARAM_NAMES = ("theta_e", "lens_e1", "lens_e2", "gamma1", "gamma2", "lens_x", "lens_y")
# what counts as one unit of error in `lens_param_loss`: about a pixel of 0.05" for radii and
# positions, 0.05 in ellipticity (q ~ 0.9 vs 1), 0.02 in shear
LENS_PARAM_SCALES = (0.05, 0.05, 0.05, 0.02, 0.02, 0.05, 0.05)
THETA_E_RANGE = (0.5, 3.0)   # arcsec
E_MAX, GAMMA_MAX, CENTER_MAX = 0.5, 0.2, 0.5
ALPHA_RES_MAX = 0.1          # arcsec
SOURCE_FOV_FRACTION = 0.4    # default source_fov = 0.4 x the image's field of view


def squash_lens_params(raw):
    """(B, 7) unbounded -> (B, 7) physical lens parameters. (e1, e2) and (gamma1, gamma2) are
    squashed as vectors, z max / sqrt(1 + |z|^2): smooth everywhere, no 0/0 at z = 0."""
    lo, hi = THETA_E_RANGE
    theta_e = lo + (hi - lo) * torch.sigmoid(raw[:, :1])
    e = E_MAX * raw[:, 1:3] / torch.sqrt(1 + (raw[:, 1:3] ** 2).sum(1, keepdim=True))
    gamma = GAMMA_MAX * raw[:, 3:5] / torch.sqrt(1 + (raw[:, 3:5] ** 2).sum(1, keepdim=True))
    return torch.cat([theta_e, e, gamma, CENTER_MAX * torch.tanh(raw[:, 5:7])], 1)


def unsquash_lens_params(params):
    """The inverse of `squash_lens_params` (sets the encoder head's starting lens)."""
    p = torch.as_tensor(params, dtype=torch.float64).reshape(-1, 7)
    lo, hi = THETA_E_RANGE
    u = (p[:, :1] - lo) / (hi - lo)
    e, g = p[:, 1:3] / E_MAX, p[:, 3:5] / GAMMA_MAX
    e = e / torch.sqrt(1 - (e ** 2).sum(1, keepdim=True))
    g = g / torch.sqrt(1 - (g ** 2).sum(1, keepdim=True))
    return torch.cat([torch.log(u / (1 - u)), e, g, torch.atanh(p[:, 5:7] / CENTER_MAX)], 1)


def smooth_deflection(lens_params, x, y):
    """SIE + external shear about the lens centre (as the simulator renders them, core 0).
    lens_params (B, 7), x, y (1, H, W) arcsec -> alpha (B, 2, H, W) arcsec."""
    theta_e, e1, e2, g1, g2, cx, cy = lens_params.unbind(1)
    ax, ay = mass.sie(x, y, theta_e, e1, e2, cx, cy)
    sx, sy = mass.shear(x, y, g1, g2, cx, cy)
    return torch.stack([ax + sx, ay + sy], 1)


def lens_equation(lens_params, size, pixel_scale, residual_alpha=None):
    """beta = theta - alpha on the simulator's pixel grid. Returns beta and alpha, each
    (B, 2, H, W) arcsec (channel 0 x, along columns; 1 y, along rows)."""
    x, y = pixel_grid(size, pixel_scale, 1, lens_params.dtype, lens_params.device)  # each (1, H, W)
    alpha = smooth_deflection(lens_params, x, y)
    if residual_alpha is not None:
        alpha = alpha + residual_alpha
    return torch.stack([x, y], 1) - alpha, alpha


def _source_coords(beta, center, source_size, source_fov):
    """Fractional source-pixel index (B, 2, H, W) of each beta; pixel k's centre lies at
    center + (k - (S - 1) / 2) * source_fov / S."""
    return (beta - center[:, :, None, None]) * (source_size / source_fov) + (source_size - 1) / 2


def source_grid(lens_params, source_size, source_fov):
    """Source-plane pixel centres (xs, ys), each (B, S, S) arcsec, about the lens centre."""
    axis = (torch.arange(source_size, dtype=lens_params.dtype, device=lens_params.device)
            - (source_size - 1) / 2) * (source_fov / source_size)
    ys, xs = torch.meshgrid(axis, axis, indexing="ij")
    return xs + lens_params[:, 5, None, None], ys + lens_params[:, 6, None, None]


def splat(values, beta, center, source_size, source_fov):
    """Bilinear scatter-add of image pixels into the source grid. values (B, C, H, W), beta
    (B, 2, H, W), center (B, 2) -> sums (B, C, S, S) of weight x value and weights (B, 1, S, S).
    Weights are differentiable in beta (frac of the index); those off the grid are dropped."""
    b, c = values.shape[:2]
    n = source_size
    u = _source_coords(beta, center, n, source_fov).flatten(2)  # (B, 2, HW)
    base = torch.floor(u.detach())
    frac = u - base
    base = base.long()
    corners = torch.tensor([[0, 0], [1, 0], [0, 1], [1, 1]], device=u.device)[:, :, None]  # (4, 2, 1)
    idx = base[:, None] + corners                                  # (B, 4, 2, HW)
    w = torch.where(corners.bool(), frac[:, None], 1 - frac[:, None]).prod(2)  # (B, 4, HW)
    inside = ((idx >= 0) & (idx < n)).all(2)
    w = w * inside
    flat = (idx[:, :, 1].clamp(0, n - 1) * n + idx[:, :, 0].clamp(0, n - 1)).flatten(1)  # (B, 4HW)
    src = torch.cat([values.flatten(2)[:, :, None] * w[:, None], w[:, None]], 1).flatten(2)  # (B, C+1, 4HW)
    out = torch.zeros(b, c + 1, n * n, dtype=src.dtype, device=src.device)
    out = out.scatter_add(2, flat[:, None].expand(b, c + 1, flat.shape[1]), src)
    out = out.reshape(b, c + 1, n, n)
    return out[:, :c], out[:, c:]


def relens(source, beta, center, source_fov):
    """S(beta(theta)): the source (B, C, S, S) sampled at beta (B, 2, H, W) -> (B, C, H, W);
    zero off the grid. align_corners=False with this normalisation puts pixel k's centre where
    `splat` does, so the two are each other's transpose."""
    grid = (beta - center[:, :, None, None]) / (source_fov / 2)  # (B, 2, H, W), -1..1 over the grid
    return F.grid_sample(source, grid.permute(0, 2, 3, 1), mode="bilinear", padding_mode="zeros",
                         align_corners=False)


def reconstruct_source(image, lens_params, pixel_scale, source_size, source_fov, residual_alpha=None):
    """The source behind `image` (B, C, H, W) for a lens (B, 7), and the image it re-lenses to.

    Returns a dict: "source" (B, C, S, S) (sky-subtracted, 0 where no ray lands), "coverage"
    (B, 1, S, S) (summed bilinear weights, ~ magnification x (source pixel / image pixel)^2),
    "beta" and "alpha" (B, 2, H, W) arcsec, "relensed" (B, C, H, W) (sky added back).
    Computed in float32 (or float64 if given) outside autocast."""
    dtype = torch.float64 if image.dtype == torch.float64 else torch.float32
    with torch.autocast(image.device.type, enabled=False):
        image, lens_params = image.to(dtype), lens_params.to(dtype)
        if residual_alpha is not None:
            residual_alpha = residual_alpha.to(dtype)
        sky = image.flatten(2).median(-1).values[:, :, None, None]  # (B, C, 1, 1): most pixels are sky
        beta, alpha = lens_equation(lens_params, image.shape[-1], pixel_scale, residual_alpha)
        center = lens_params[:, 5:7]
        sums, coverage = splat(image - sky, beta, center, source_size, source_fov)
        source = torch.where(coverage > 0, sums / coverage.clamp(min=1e-12), torch.zeros_like(sums))
        relensed = relens(source, beta, center, source_fov) + sky
    return dict(source=source, coverage=coverage, beta=beta, alpha=alpha, relensed=relensed)


def lens_param_loss(pred, true):
    """Smooth-L1 between predicted and true lens parameters (B, 7), each in units of
    LENS_PARAM_SCALES; NaN true values (a column the simulator does not record) are ignored."""
    scale = pred.new_tensor(LENS_PARAM_SCALES)
    true = true.to(pred)
    known = torch.isfinite(true)
    if not known.any():
        return pred.sum() * 0.0
    err = F.smooth_l1_loss(pred / scale, torch.where(known, true, pred.detach()) / scale, reduction="none")
    return err[known].mean()


class ResidualDeflection(nn.Module):
    """Image (B, C, H, W) -> residual deflection (B, 2, H, W) arcsec, |alpha| < ALPHA_RES_MAX:
    three stride-2 convolutions to a 1/8-resolution field (nodes ~0.4" apart at 0.05" pixels,
    the scale of a subhalo's perturbation of an arc), upsampled bilinearly."""

    def __init__(self, in_chans, width=32):
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(in_chans, width // 2, 3, 2, 1), nn.GELU(),
            nn.Conv2d(width // 2, width, 3, 2, 1), nn.GELU(),
            nn.Conv2d(width, width, 3, 2, 1), nn.GELU(),
            nn.Conv2d(width, 2, 3, 1, 1))
        nn.init.normal_(self.net[-1].weight, std=1e-3)  # starts near 0 (but not at 0: gradients reach every layer)
        nn.init.zeros_(self.net[-1].bias)

    def forward(self, x):
        field = ALPHA_RES_MAX * torch.tanh(self.net(x))  # (B, 2, H/8, W/8)
        return F.interpolate(field, size=x.shape[-2:], mode="bilinear", align_corners=False)


@register("lens_pinn", kind="image")
class LensPINN(nn.Module):
    """Encoder -> smooth lens (+ residual deflection) -> source reconstruction and re-lensing ->
    classifier on [image, source, residual]. See the module docstring."""

    def __init__(self, in_chans: int = 1, n_classes: int = 3, image_size: int = 150, pixel_scale: float = 0.05,
                 encoder: str = "resnet18", classifier: str = "resnet18", residual_field: bool = True,
                 source_fov: float | None = None, drop_rate: float = 0.0, pretrained_path: str | None = None,
                 source_size: int | None = None, encoder_pretrained_path: str | None = None,
                 start_lens=(1.4, 0.05, 0.0, 0.0, 0.0, 0.0, 0.0)):
        super().__init__()
        self.pixel_scale = pixel_scale
        # the Model I source (r_e 0.25", within 0.5" of the axis) lies inside 3" = 0.4 x 7.5"
        self.source_fov = source_fov or SOURCE_FOV_FRACTION * image_size * pixel_scale
        # source pixels as large as image pixels: where the lens hardly magnifies (mu ~ 1) each
        # still receives ~1 ray, so the reconstruction has no holes
        self.source_size = source_size or max(8, round(self.source_fov / pixel_scale))
        self.encoder = TimmClassifier(encoder, in_chans, n_outputs=7, input_size=native_input_size(encoder, image_size),
                                      pretrained_path=encoder_pretrained_path)
        head = self.encoder.net.get_classifier()  # regresses the unsquashed lens parameters
        nn.init.normal_(head.weight, std=1e-3)
        # e1 = 0.05 rather than 0 at the start: the SIE's |e| has no gradient at e = 0
        with torch.no_grad():
            head.bias.copy_(unsquash_lens_params(start_lens)[0].to(head.bias))
        self.residual = ResidualDeflection(in_chans) if residual_field else None
        n_in = 3 * in_chans + (2 if residual_field else 0)
        self.classifier = TimmClassifier(classifier, n_in, n_outputs=n_classes, drop_rate=drop_rate,
                                         input_size=native_input_size(classifier, image_size),
                                         pretrained_path=pretrained_path)

    def forward(self, x):
        # x (B, C, H, W)
        h, w = x.shape[-2:]
        assert h == w, "square images (the pixel grid of physics.strong.instrument)"
        lens_params = squash_lens_params(self.encoder(x)["logits"].float())  # (B, 7)
        alpha_res = self.residual(x) if self.residual is not None else None  # (B, 2, H, W) arcsec
        rec = reconstruct_source(x, lens_params, self.pixel_scale, self.source_size, self.source_fov, alpha_res)
        source_img = F.interpolate(rec["source"], size=(h, w), mode="bilinear", align_corners=False)  # (B, C, H, W)
        inputs = [x, source_img.to(x), (x - rec["relensed"]).to(x)]
        if alpha_res is not None:
            inputs.append(alpha_res / ALPHA_RES_MAX)
        out = self.classifier(torch.cat(inputs, 1))
        out.update(lens_params=lens_params, source=rec["source"], alpha=rec["alpha"], relensed=rec["relensed"])
        return out
