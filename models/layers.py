"""Pieces shared by the light-curve classifiers: pooling, hierarchical heads and their loss."""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

try:  # optional, GPU only
    from flash_attn import flash_attn_varlen_func
except ImportError:  # pragma: no cover - depends on the machine
    flash_attn_varlen_func = None


class AttentionPooling(nn.Module):
    """Multi-head attention of one learned query over the observed time steps.

    flash-attn's varlen kernel on CUDA in fp16/bf16 when installed, else
    F.scaled_dot_product_attention with a key mask; both give the same result.
    """

    def __init__(self, d_model: int, n_heads: int = 4, dropout: float = 0.0):
        super().__init__()
        assert d_model % n_heads == 0, "d_model must be divisible by n_heads"
        self.n_heads = n_heads
        self.query = nn.Parameter(torch.randn(1, 1, d_model) * 0.02)
        self.q_proj = nn.Linear(d_model, d_model)
        self.k_proj = nn.Linear(d_model, d_model, bias=False)  # a key bias cannot change a softmax over keys
        self.v_proj = nn.Linear(d_model, d_model)
        self.out = nn.Linear(d_model, d_model)
        self.dropout = dropout
        self.use_flash = True

    def forward(self, h, mask):
        # h (B, T, D), mask (B, T) bool → (B, D)
        B, T, D = h.shape
        H, Dh = self.n_heads, D // self.n_heads
        mask = mask.clone()
        mask[:, 0] |= ~mask.any(dim=1)  # a curve with nothing observed attends to its first step
        q = self.q_proj(self.query).expand(B, 1, D).reshape(B, 1, H, Dh)
        k, v = self.k_proj(h).reshape(B, T, H, Dh), self.v_proj(h).reshape(B, T, H, Dh)
        p = self.dropout if self.training else 0.0
        if (self.use_flash and flash_attn_varlen_func is not None and h.is_cuda
                and h.dtype in (torch.float16, torch.bfloat16)):
            pooled = varlen_pool(flash_attn_varlen_func, q, k, v, mask, p)
        else:
            pooled = F.scaled_dot_product_attention(
                q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                attn_mask=mask[:, None, None, :], dropout_p=p).reshape(B, D)
        return self.out(pooled)


def varlen_pool(attn_fn, q, k, v, mask, dropout_p):
    """One query per curve attending to its observed steps, through a flash-attn varlen call.

    q (B, 1, H, Dh); k, v (B, T, H, Dh); mask (B, T) → (B, H*Dh). The observed keys are packed
    into one (total, H, Dh) tensor with cumulative lengths, as flash_attn_varlen_func expects.
    """
    B = q.shape[0]
    lengths = mask.sum(dim=1, dtype=torch.int32)
    cu_k = F.pad(lengths.cumsum(0, dtype=torch.int32), (1, 0))
    cu_q = torch.arange(B + 1, dtype=torch.int32, device=q.device)
    out = attn_fn(q.reshape(B, *q.shape[2:]), k[mask], v[mask], cu_q, cu_k, 1, int(lengths.max()),
                  dropout_p=dropout_p)
    return out.reshape(B, -1)


class MaskedMeanPooling(nn.Module):
    def forward(self, h, mask):
        m = mask.unsqueeze(-1).to(h.dtype)
        return (h * m).sum(1) / m.sum(1).clamp(min=1.0)


class ClassifierHead(nn.Module):
    """Shared trunk (Linear, LayerNorm, SiLU, Dropout) and the thesis's heads.

    hierarchical: stage 1 = unlensed vs lensed, stage 2 = PSPL vs binary given lensed (one logit
    each), log p = (log σ(-z1), log σ(z1) + log σ(-z2), log σ(z1) + log σ(z2)); with a fourth
    class (variable), stage 3 = flat vs variable given unlensed splits the first term:
    (log σ(-z1) + log σ(-z3), ..., log σ(-z1) + log σ(z3)). Optional auxiliary n-class head.
    Otherwise one n-class head.
    """

    def __init__(self, d_model: int, dropout: float, hierarchical: bool, use_aux_head: bool, n_classes: int = 3):
        super().__init__()
        self.hierarchical = hierarchical
        self.trunk = nn.Sequential(nn.Linear(d_model, d_model), nn.LayerNorm(d_model), nn.SiLU(), nn.Dropout(dropout))
        if hierarchical:
            if n_classes not in (3, 4):
                raise ValueError(f"the hierarchical head is flat / PSPL / binary (/ variable), not {n_classes} classes")
            self.stage1 = nn.Linear(d_model, 1)
            self.stage2 = nn.Linear(d_model, 1)
            self.stage3 = nn.Linear(d_model, 1) if n_classes == 4 else None
            self.aux = nn.Linear(d_model, n_classes) if use_aux_head else None
        else:
            self.classifier = nn.Linear(d_model, n_classes)

    def forward(self, pooled):
        z = self.trunk(pooled)
        if not self.hierarchical:
            logits = self.classifier(z)
            return {"logits": logits, "log_probs": F.log_softmax(logits.float(), dim=-1)}
        z1 = self.stage1(z).squeeze(-1).float()
        z2 = self.stage2(z).squeeze(-1).float()
        lensed, unlensed = F.logsigmoid(z1), F.logsigmoid(-z1)
        out = {"stage1": z1, "stage2": z2}
        if self.stage3 is None:
            terms = [unlensed]
        else:
            z3 = out["stage3"] = self.stage3(z).squeeze(-1).float()
            terms = [unlensed + F.logsigmoid(-z3)]
        terms += [lensed + F.logsigmoid(-z2), lensed + F.logsigmoid(z2)]
        if self.stage3 is not None:
            terms.append(unlensed + F.logsigmoid(z3))
        out["log_probs"] = torch.stack(terms, dim=-1)
        if self.aux is not None:
            out["aux"] = self.aux(z)
        return out


class ClassifierLoss(nn.Module):
    """L = λ1 BCE(unlensed vs lensed) + λ2 BCE(PSPL vs binary | lensed) [+ λ1 BCE(flat vs variable |
    unlensed)] + λaux CE(n-class), or CE.

    Every term is a per-sample loss times its class weight, divided by the batch size (not by
    the summed weights), so DDP's average over equal per-rank batches equals the global batch's
    loss exactly.
    """

    def __init__(self, class_weights=None, stage1_weight=1.0, stage2_weight=1.0, aux_weight=0.5):
        super().__init__()
        self.register_buffer("class_weights", torch.as_tensor(
            class_weights if class_weights is not None else [1.0, 1.0, 1.0], dtype=torch.float32))
        self.weights = (stage1_weight, stage2_weight, aux_weight)

    def forward(self, out, y):
        w = self.class_weights[y]
        B = y.shape[0]
        parts = {}
        if "logits" in out:
            parts["ce"] = (w * F.cross_entropy(out["logits"].float(), y, reduction="none")).sum() / B
            return parts["ce"], parts
        lensed = ((y == 1) | (y == 2)).float()
        parts["stage1"] = (w * F.binary_cross_entropy_with_logits(out["stage1"], lensed, reduction="none")).sum() / B
        parts["stage2"] = (w * lensed * F.binary_cross_entropy_with_logits(
            out["stage2"], (y == 2).float(), reduction="none")).sum() / B
        total = self.weights[0] * parts["stage1"] + self.weights[1] * parts["stage2"]
        if "stage3" in out:
            parts["stage3"] = (w * (1.0 - lensed) * F.binary_cross_entropy_with_logits(
                out["stage3"], (y == 3).float(), reduction="none")).sum() / B
            total = total + self.weights[0] * parts["stage3"]
        if "aux" in out:
            parts["aux"] = (w * F.cross_entropy(out["aux"].float(), y, reduction="none")).sum() / B
            total = total + self.weights[2] * parts["aux"]
        return total, parts
