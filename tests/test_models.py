"""Model tests: shapes, finite outputs, gradients to every parameter, causality, attention paths."""
import pytest
import torch

from models import create_model, list_models, model_kwargs
from models.layers import AttentionPooling, ClassifierLoss, varlen_pool

T = 96


def features(B=3, T=T, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(B, T, 4, generator=g)
    x[..., 3] = (torch.rand(B, T, generator=g) > 0.1).float()
    x[..., :3] *= x[..., 3:]
    return x


def small(name, **extra):
    return create_model(name, **model_kwargs(name, dict(d_model=16, n_layers=2, dropout=0.0, patch_size=8,
                                                         n_heads=2, **extra)))


@pytest.mark.parametrize("name", list_models("light_curve"))
@pytest.mark.parametrize("hierarchical", [True, False])
@pytest.mark.parametrize("n_classes", [3, 4])
def test_shapes_finite_and_gradients(name, hierarchical, n_classes):
    torch.manual_seed(0)
    model = small(name, hierarchical=hierarchical, use_aux_head=True, n_classes=n_classes)
    x = features(B=4)
    out = model(x)
    assert out["log_probs"].shape == (4, n_classes)
    assert torch.isfinite(out["log_probs"]).all()
    assert torch.allclose(out["log_probs"].exp().sum(-1), torch.ones(4), atol=1e-5)
    y = torch.tensor([0, 1, 2, n_classes - 1])
    loss, parts = ClassifierLoss([1.0, 2.0, 1.0, 1.0][:n_classes])(out, y)
    loss.backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()
               or p.grad.abs().sum() == 0]
    assert not missing, f"parameters without gradient: {missing}"
    stages = {"stage1", "stage2", "aux"} | ({"stage3"} if n_classes == 4 else set())
    assert set(parts) == (stages if hierarchical else {"ce"})
    if hierarchical and n_classes == 4:  # p(flat) + p(variable) = the unlensed probability of stage 1
        p = out["log_probs"].exp()
        torch.testing.assert_close(p[:, 0] + p[:, 3], torch.sigmoid(-out["stage1"]), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name", list_models("light_curve"))
def test_encoder_is_causal(name):
    """Encoder output j is unchanged when inputs after j's last input step change."""
    torch.manual_seed(0)
    model = small(name).eval()
    stride = model.causal_stride
    x = features(B=2)
    cut = 40  # change every input step >= cut
    y = x.clone()
    y[:, cut:, :3] += torch.randn_like(y[:, cut:, :3])
    with torch.no_grad():
        hx, hy = model.encode(x), model.encode(y)
    n_safe = cut // stride  # outputs whose inputs all lie before the cut
    assert n_safe > 0
    assert torch.allclose(hx[:, :n_safe], hy[:, :n_safe], atol=1e-6)
    assert not torch.allclose(hx[:, n_safe:], hy[:, n_safe:], atol=1e-4)  # later outputs do see the change


@pytest.mark.parametrize("name", list_models("light_curve"))
def test_truncated_curve_ignores_unobserved_future(name):
    """A curve observed up to step t: its class probabilities do not depend on what lies after t."""
    torch.manual_seed(0)
    model = small(name).eval()
    x = features(B=2)
    x[:, 48:] = 0.0  # not observed after step 48 (mask channel 0, features 0)
    y = x.clone()
    y[:, 48:, :3] = torch.randn_like(y[:, 48:, :3])  # garbage where the mask says "missing"
    y[:, 48:, :3] *= 0  # the feature code zeroes unobserved bins; the model must rely on that only
    with torch.no_grad():
        assert torch.equal(model(x)["log_probs"], model(y)["log_probs"])
        # and the mask matters: marking later bins observed changes the output
        z = x.clone()
        z[:, 48:, 3] = 1.0
        z[:, 48:, 0] = 5.0
        assert not torch.allclose(model(x)["log_probs"], model(z)["log_probs"])


def reference_varlen(q, k, v, cu_q, cu_k, max_q, max_k, dropout_p=0.0):
    """flash_attn_varlen_func's contract, in plain PyTorch (checks the packing on CPU)."""
    out = []
    for b in range(len(cu_q) - 1):
        qs, ks = q[cu_q[b]:cu_q[b + 1]], k[cu_k[b]:cu_k[b + 1]]
        w = torch.softmax(torch.einsum("qhd,khd->hqk", qs, ks) / qs.shape[-1] ** 0.5, dim=-1)
        out.append(torch.einsum("hqk,khd->qhd", w, v[cu_k[b]:cu_k[b + 1]]))
    return torch.cat(out)


def test_flash_varlen_packing_matches_sdpa():
    torch.manual_seed(0)
    pool = AttentionPooling(16, n_heads=4).eval()
    h = torch.randn(3, 20, 16)
    mask = torch.rand(3, 20) > 0.4
    mask[2] = False  # nothing observed: falls back to the first step
    with torch.no_grad():
        sdpa = pool(h, mask)
        m = mask.clone()
        m[:, 0] |= ~m.any(1)
        q = pool.q_proj(pool.query).expand(3, 1, 16).reshape(3, 1, 4, 4)
        k, v = pool.k_proj(h).reshape(3, 20, 4, 4), pool.v_proj(h).reshape(3, 20, 4, 4)
        packed = pool.out(varlen_pool(reference_varlen, q, k, v, m, 0.0))
    assert torch.allclose(sdpa, packed, atol=1e-5)


def test_unknown_model_name():
    with pytest.raises(ValueError, match="unknown model 'resnet9000'.*cnn_gru"):
        create_model("resnet9000")
