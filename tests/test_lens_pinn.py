"""LensPINN (models/lens_pinn.py): its lens equation is the simulator's, the true lens recovers
the simulator's source from a Model I image (and a wrong one does not), the model trains end to
end (the encoder through the physics alone), and it is in the registry."""
import time

import pytest
import torch

from models import create_model, list_models, model_kwargs
from models.lens_pinn import (LENS_PARAM_NAMES, lens_equation, lens_param_loss, reconstruct_source, relens,
                              source_grid, splat, squash_lens_params, unsquash_lens_params)
from physics.strong import light, mass
from physics.strong.instrument import pixel_grid
from physics.strong.render import Renderer
from physics.strong.scenes import CONFIGS, sample_model1

MODEL1 = CONFIGS["deeplense-model1"]


def random_lenses(n, seed=0):
    return squash_lens_params(2 * torch.randn(n, 7, generator=torch.Generator().manual_seed(seed)))


def reference_alpha(lens_params, size, pixel_scale):
    """SIE + shear straight from physics.strong.mass, in float64, on the simulator's grid."""
    x, y = pixel_grid(size, pixel_scale, 1, torch.float64)
    p = lens_params.double()
    ax, ay = mass.sie(x, y, p[:, 0], p[:, 1], p[:, 2], p[:, 5], p[:, 6])
    sx, sy = mass.shear(x, y, p[:, 3], p[:, 4], p[:, 5], p[:, 6])
    return torch.stack([ax + sx, ay + sy], 1), torch.stack([x, y], 1)


# --------------------------------------------------------------------------- physics
def test_squash_ranges_and_inverse():
    p = squash_lens_params(50 * torch.randn(256, 7, generator=torch.Generator().manual_seed(0)))
    assert ((p[:, 0] >= 0.5) & (p[:, 0] <= 3.0)).all()  # float32 reaches the bounds far out
    assert (p[:, 1:3].norm(dim=1) <= 0.5).all() and (p[:, 3:5].norm(dim=1) <= 0.2).all()
    assert (p[:, 5:].abs() <= 0.5).all()
    q = random_lenses(16)
    assert torch.allclose(squash_lens_params(unsquash_lens_params(q)).float(), q, atol=1e-5)


def test_lens_equation_is_the_simulators():
    lens = random_lenses(8)
    beta, alpha = lens_equation(lens, MODEL1.size, MODEL1.pixel_scale)  # float32
    ref, theta = reference_alpha(lens, MODEL1.size, MODEL1.pixel_scale)
    assert alpha.shape == (8, 2, 150, 150)
    assert torch.allclose(alpha.double(), ref, atol=1e-5)  # measured max error 2.6e-6 (float32)
    assert torch.allclose(beta.double(), theta - ref, atol=1e-5)


@pytest.mark.parametrize("residual_field", [False, True])
def test_model_alpha_is_the_simulators(residual_field):
    torch.manual_seed(0)
    model = create_model("lens_pinn", image_size=150, pixel_scale=0.05, residual_field=residual_field)
    if residual_field:  # a zeroed residual head leaves the smooth lens alone
        torch.nn.init.zeros_(model.residual.net[-1].weight)
    with torch.no_grad():
        out = model.eval()(torch.rand(2, 1, 150, 150))
    ref, _ = reference_alpha(out["lens_params"], 150, 0.05)
    assert torch.allclose(out["alpha"].double(), ref, atol=1e-5)
    # a fresh model starts from the mid-range lens: theta_e 1.4", centred
    assert torch.allclose(out["lens_params"][:, 0], torch.tensor(1.4), atol=0.05)
    assert out["lens_params"][:, 5:].abs().max() < 0.05


def test_relens_is_the_transpose_of_splat():
    """<splat(v), s> = <v, relens(s)>: both use the same pixel centres and bilinear weights."""
    g = torch.Generator().manual_seed(0)
    lens = random_lenses(2).double()
    beta, _ = lens_equation(lens, 40, 0.1)
    v = torch.rand(2, 3, 40, 40, generator=g, dtype=torch.float64)
    s = torch.rand(2, 3, 25, 25, generator=g, dtype=torch.float64)
    sums, weights = splat(v, beta, lens[:, 5:7], 25, 2.0)
    assert torch.allclose((sums * s).sum(), (v * relens(s, beta, lens[:, 5:7], 2.0)).sum())
    ones, _ = splat(torch.ones_like(v[:, :1]), beta, lens[:, 5:7], 25, 2.0)
    assert torch.allclose(ones, weights)


@pytest.fixture(scope="module")
def model1_images():
    """Four Model I lenses without substructure: noise-free pixels before the PSF (unit source
    flux), the noisy, PSF-blurred, min-max scaled image, the true lens and the true source."""
    scene, params = sample_model1(MODEL1, torch.zeros(4, dtype=torch.long), torch.Generator().manual_seed(0))
    renderer = Renderer(MODEL1, dtype=torch.float64)
    clean = renderer.shoot(scene, MODEL1.size, MODEL1.pixel_scale, MODEL1.supersample)[0]  # (B, 1, H, W)
    noisy = renderer.render(scene, dict(params), torch.Generator().manual_seed(1))["images"]
    lens = torch.stack([scene[k] for k in LENS_PARAM_NAMES], 1)  # (B, 7)

    def true_source(lens_params, size, fov):  # the Sersic source on the same source-plane grid, flux / pixel
        xs, ys = source_grid(lens_params, size, fov)
        sb = light.sersic(xs, ys, 1.0, scene["src_r_e"], scene["src_n"], scene["src_e1"], scene["src_e2"],
                          scene["src_x"], scene["src_y"])
        return (sb * MODEL1.pixel_scale ** 2)[:, None]  # (B, 1, S, S)
    return clean, noisy, lens, true_source


def ncc(a, b):
    """Normalised cross-correlation per image (B,) over all pixels."""
    a, b = a.flatten(1), b.flatten(1)
    a, b = a - a.mean(1, keepdim=True), b - b.mean(1, keepdim=True)
    return (a * b).sum(1) / (a.norm(dim=1) * b.norm(dim=1))


def rel_l2(a, b):
    return (a - b).flatten(1).norm(dim=1) / b.flatten(1).norm(dim=1)


def fitted(a, b):
    """a scaled by least squares onto b (the min-max image has its own flux unit)."""
    k = (a * b).sum((1, 2, 3), keepdim=True) / (a * a).sum((1, 2, 3), keepdim=True)
    return a * k


SOURCE_SIZE, SOURCE_FOV = 60, 3.0  # the model's defaults for Model I: 0.4 x 7.5", pixels of 0.05"


@pytest.mark.parametrize("theta_e_factor", [1.0, 1.2])
def test_source_from_noise_free_pixels(model1_images, theta_e_factor):
    clean, _, lens, true_source = model1_images
    lens = lens.clone()
    lens[:, 0] *= theta_e_factor
    rec = reconstruct_source(clean.float(), lens.float(), MODEL1.pixel_scale, SOURCE_SIZE, SOURCE_FOV)
    assert (rec["coverage"] > 0).all()  # no holes: every source pixel receives rays
    truth = true_source(lens, SOURCE_SIZE, SOURCE_FOV)
    src_ncc, src_err = ncc(rec["source"].double(), truth), rel_l2(rec["source"].double(), truth)
    img_ncc, img_err = ncc(rec["relensed"].double(), clean), rel_l2(rec["relensed"].double(), clean)
    if theta_e_factor == 1.0:
        # measured: source NCC 0.9994-0.9998, rel. L2 0.021-0.034; relensed NCC 0.9986-0.9991, rel. L2 0.043-0.052
        assert (src_ncc > 0.998).all() and (src_err < 0.05).all(), (src_ncc, src_err)
        assert (img_ncc > 0.995).all() and (img_err < 0.07).all(), (img_ncc, img_err)
    else:  # theta_e 20% too large: the images of the source disagree. Measured: source NCC 0.62-0.72,
        # rel. L2 0.68-0.82; relensed NCC 0.65-0.68, rel. L2 0.69-0.72 (5% too large: relensed rel. L2 0.28-0.34)
        assert (src_ncc < 0.8).all() and (src_err > 0.5).all(), (src_ncc, src_err)
        assert (img_ncc < 0.8).all() and (img_err > 0.5).all(), (img_ncc, img_err)


def test_source_from_the_observed_image(model1_images):
    """The image as written (PSF 0.087", noise at peak S/N 240-330, min-max scaled)."""
    _, noisy, lens, true_source = model1_images
    rec = reconstruct_source(noisy.float(), lens.float(), MODEL1.pixel_scale, SOURCE_SIZE, SOURCE_FOV)
    truth = true_source(lens, SOURCE_SIZE, SOURCE_FOV)
    source = rec["source"].double()
    # measured: source NCC 0.9976-0.9987, rel. L2 (scale fitted) 0.054-0.069; relensed NCC 0.9986-0.9988,
    # rel. L2 0.048-0.051 (the noise: the source is a mean over many pixels, the relensed image is noise-free)
    assert (ncc(source, truth) > 0.995).all() and (rel_l2(fitted(source, truth), truth) < 0.1).all()
    relensed = rec["relensed"].double()
    assert (ncc(relensed, noisy) > 0.995).all() and (rel_l2(relensed, noisy) < 0.07).all()
    # the sky level is taken off and put back: an affine change of the input carries through
    again = reconstruct_source(3 * noisy.float() - 1, lens.float(), MODEL1.pixel_scale, SOURCE_SIZE, SOURCE_FOV)
    assert torch.allclose(again["source"], 3 * rec["source"], atol=1e-4)
    assert torch.allclose(again["relensed"], 3 * rec["relensed"] - 1, atol=1e-4)


def test_lens_param_loss():
    true = random_lenses(4)
    pred = (true + 0.01 * torch.randn(4, 7)).requires_grad_()
    assert float(lens_param_loss(true, true)) == 0.0
    true_missing = true.clone()
    true_missing[:, 5:] = float("nan")  # Model I records no lens centre
    loss = lens_param_loss(pred, true_missing)
    assert torch.isfinite(loss) and float(loss.detach()) > 0
    loss.backward()
    assert torch.isfinite(pred.grad).all() and (pred.grad[:, 5:] == 0).all() and pred.grad[:, :5].abs().sum() > 0
    assert float(lens_param_loss(pred, torch.full_like(true, float("nan"))).detach()) == 0.0


# --------------------------------------------------------------------------- model
CASES = [  # (encoder, in_chans, image_size, residual_field)
    ("resnet18", 1, 64, True),
    ("resnet18", 3, 64, False),
    ("vit_tiny_patch16_224", 1, 48, True),  # resized to 224 on the device, as in models/timm_classifier.py
]


@pytest.mark.parametrize("encoder,in_chans,size,residual_field", CASES)
def test_shapes_finite_and_every_gradient(encoder, in_chans, size, residual_field):
    torch.manual_seed(0)
    model = create_model("lens_pinn", in_chans=in_chans, n_classes=3, image_size=size, pixel_scale=0.1,
                         encoder=encoder, classifier="resnet18", residual_field=residual_field)
    with torch.no_grad():  # timm zero-initialises the last norm of residual blocks, which blocks gradients at init
        for p in model.parameters():
            p.add_(0.01 * torch.randn_like(p))
    x = torch.randn(2, in_chans, size, size)
    out = model.train()(x)
    s = model.source_size
    shapes = dict(logits=(2, 3), log_probs=(2, 3), lens_params=(2, 7), source=(2, in_chans, s, s),
                  alpha=(2, 2, size, size), relensed=(2, in_chans, size, size))
    for key, shape in shapes.items():
        assert out[key].shape == shape, key
        assert torch.isfinite(out[key]).all(), key
    assert torch.allclose(out["log_probs"].exp().sum(-1), torch.ones(2), atol=1e-5)
    # the classification loss alone: the encoder reaches it only through the lens equation
    torch.nn.functional.nll_loss(out["log_probs"], torch.tensor([0, 2])).backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()
               or not p.grad.abs().sum()]
    assert not missing, missing[:5]


def test_forward_backward_timing():
    """B = 8 Model I images, resnet18 encoder and classifier (printed; run with -s)."""
    torch.manual_seed(0)
    model = create_model("lens_pinn")
    x = torch.rand(8, 1, 150, 150)
    times = []
    for _ in range(2):
        start = time.perf_counter()
        model(x)["log_probs"][:, 0].sum().backward()
        times.append(time.perf_counter() - start)
    print(f"lens_pinn resnet18/resnet18, 8 x 1 x 150 x 150: forward + backward {min(times):.2f} s")


def test_registry_and_local_classifier_weights(tmp_path):
    import timm
    assert "lens_pinn" in list_models("image")
    options = dict(in_chans=1, n_classes=3, image_size=64, pixel_scale=0.1, lr=1e-3, backbone="resnet18")
    kwargs = model_kwargs("lens_pinn", options)
    assert "lr" not in kwargs and "backbone" not in kwargs
    weights = timm.create_model("resnet18", pretrained=False, num_classes=1000)
    torch.save(weights.state_dict(), tmp_path / "resnet18.pth")
    model = create_model("lens_pinn", pretrained_path=str(tmp_path / "resnet18.pth"), **kwargs)
    assert torch.equal(model.classifier.net.layer1[0].conv1.weight, weights.layer1[0].conv1.weight)
    assert model.classifier.net.conv1.in_channels == 5  # [x, source, residual] + 2 residual-deflection channels
