"""A masked autoencoder (He et al. 2022) for lensing images, and the ViT classifier fine-tuned from it.

    mae = create_model("mae", in_chans=1, image_size=150, patch_size=10, embed_dim=192, depth=6, num_heads=3,
                       decoder_embed_dim=128, decoder_depth=2, decoder_num_heads=4, mask_ratio=0.75)
    out = mae(x)  # x (B, C, H, W) normalised → "pred", "target" (B, L, p*p*C) and "mask" (B, L), 1 = masked
    clf = create_model("vit", in_chans=1, image_size=150, patch_size=10, embed_dim=192, depth=6, num_heads=3,
                       n_outputs=3)
    clf.encoder.load_state_dict(mae.encoder.state_dict())  # the same module, keys and shapes

The encoder is a timm VisionTransformer (patch embedding, class token, blocks, final norm, no
head), so its attention is timm's `F.scaled_dot_product_attention`: flash / memory-efficient
kernels on GPUs, the plain maths on a CPU. Its position embedding is the fixed 2-D sin-cos one
(not trained), in the MAE as in the classifier. Images of another size than `image_size` are
resized to it on the device (bilinear), as the timm classifiers do.

Masking: exactly n_masked = round(mask_ratio * L) of the L patches of every image are masked,
chosen at random per image in training and from a fixed seed in eval mode, so a validation loss
is comparable from epoch to epoch. The encoder sees only the visible patches; the lighter decoder
sees them with a shared mask token in place of each masked one and predicts every patch's pixels.
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from models import register
from models.timm_classifier import classifier_outputs

EVAL_MASK_SEED = 0


def sincos_position_embedding(dim: int, grid: int, class_token: bool = True) -> torch.Tensor:
    """(1, [1 +] grid*grid, dim) fixed 2-D sin-cos embedding: half the channels encode the row,
    half the column, each as sines and cosines of geometric frequencies; the class token gets zeros."""
    if dim % 4:
        raise ValueError(f"embed_dim {dim} must be a multiple of 4 for the 2-D sin-cos position embedding")
    omega = 1.0 / 10000 ** (torch.arange(dim // 4, dtype=torch.float64) / (dim // 4))
    rows, cols = torch.meshgrid(torch.arange(grid, dtype=torch.float64), torch.arange(grid, dtype=torch.float64),
                                indexing="ij")
    parts = [f(pos.reshape(-1, 1) * omega) for pos in (rows, cols) for f in (torch.sin, torch.cos)]
    table = torch.cat(parts, 1).float()  # (grid*grid, dim)
    if class_token:
        table = torch.cat([torch.zeros(1, dim), table])
    return table[None]


def vit_encoder(in_chans: int, image_size: int, patch_size: int, embed_dim: int, depth: int, num_heads: int,
                drop_path_rate: float = 0.0):
    """A timm VisionTransformer without head; the fixed sin-cos position embedding is not trained."""
    from timm.models.vision_transformer import VisionTransformer
    if image_size % patch_size:
        raise ValueError(f"image size {image_size} is not a multiple of the patch size {patch_size}")
    vit = VisionTransformer(img_size=image_size, patch_size=patch_size, in_chans=in_chans, num_classes=0,
                            global_pool="token", embed_dim=embed_dim, depth=depth, num_heads=num_heads,
                            class_token=True, drop_path_rate=drop_path_rate)
    with torch.no_grad():
        vit.pos_embed.copy_(sincos_position_embedding(embed_dim, image_size // patch_size))
    vit.pos_embed.requires_grad_(False)
    return vit


def _resize(x, size):
    if x.shape[-1] == size and x.shape[-2] == size:
        return x
    return F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)


def patchify(x: torch.Tensor, p: int) -> torch.Tensor:
    """(B, C, H, W) → (B, L, p*p*C), patches in row-major order, pixels (row, column, channel)."""
    B, C, H, W = x.shape
    x = x.reshape(B, C, H // p, p, W // p, p)
    return torch.einsum("bchpwq->bhwpqc", x).reshape(B, (H // p) * (W // p), p * p * C)


def unpatchify(t: torch.Tensor, p: int, C: int) -> torch.Tensor:
    """(B, L, p*p*C) → (B, C, H, W), the inverse of `patchify` for square images."""
    B, L, _ = t.shape
    g = math.isqrt(L)
    x = t.reshape(B, g, g, p, p, C)
    return torch.einsum("bhwpqc->bchpwq", x).reshape(B, C, g * p, g * p)


def n_masked_patches(mask_ratio: float, n_patches: int) -> int:
    n = int(round(mask_ratio * n_patches))
    if not 0 < n < n_patches:
        raise ValueError(f"mask ratio {mask_ratio} masks {n} of {n_patches} patches; it must leave some masked "
                         "and some visible")
    return n


@register("mae", kind="image")
class MaskedAutoencoder(nn.Module):
    def __init__(self, in_chans: int, image_size: int, patch_size: int, embed_dim: int = 192, depth: int = 6,
                 num_heads: int = 3, decoder_embed_dim: int = 128, decoder_depth: int = 2, decoder_num_heads: int = 4,
                 mask_ratio: float = 0.75):
        super().__init__()
        from timm.models.vision_transformer import Block
        self.encoder = vit_encoder(in_chans, image_size, patch_size, embed_dim, depth, num_heads)
        self.image_size, self.patch_size, self.in_chans = image_size, patch_size, in_chans
        self.n_patches = (image_size // patch_size) ** 2
        self.n_masked = n_masked_patches(mask_ratio, self.n_patches)
        self.decoder_embed = nn.Linear(embed_dim, decoder_embed_dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, decoder_embed_dim))
        nn.init.normal_(self.mask_token, std=0.02)
        self.register_buffer("decoder_pos_embed", sincos_position_embedding(decoder_embed_dim, image_size // patch_size),
                             persistent=False)
        self.decoder_blocks = nn.Sequential(*[Block(decoder_embed_dim, decoder_num_heads, qkv_bias=True)
                                              for _ in range(decoder_depth)])
        self.decoder_norm = nn.LayerNorm(decoder_embed_dim)
        self.decoder_pred = nn.Linear(decoder_embed_dim, patch_size * patch_size * in_chans)

    def random_masking(self, B: int, device):
        """(kept patch indices (B, L - n_masked), mask (B, L) 1 = masked, restore order (B, L))."""
        L = self.n_patches
        if self.training:
            noise = torch.rand(B, L, device=device)
        else:  # the same masks every evaluation
            noise = torch.rand(B, L, device=device, generator=torch.Generator(device).manual_seed(EVAL_MASK_SEED))
        order = noise.argsort(1)
        restore = order.argsort(1)
        n_keep = L - self.n_masked
        mask = torch.ones(B, L, device=device)
        mask[:, :n_keep] = 0
        return order[:, :n_keep], torch.gather(mask, 1, restore), restore

    def forward(self, x):
        x = _resize(x, self.image_size)  # (B, C, S, S)
        B = x.shape[0]
        enc = self.encoder
        tokens = enc.patch_embed(x) + enc.pos_embed[:, 1:]  # (B, L, D)
        keep, mask, restore = self.random_masking(B, x.device)
        D = tokens.shape[-1]
        visible = torch.gather(tokens, 1, keep[..., None].expand(-1, -1, D))  # (B, L_keep, D)
        cls = (enc.cls_token + enc.pos_embed[:, :1]).expand(B, -1, -1)
        z = enc.norm(enc.blocks(torch.cat([cls, visible], 1)))  # (B, 1 + L_keep, D)
        z = self.decoder_embed(z)
        Dd = z.shape[-1]
        full = torch.cat([z[:, 1:], self.mask_token.to(z.dtype).expand(B, self.n_masked, -1)], 1)
        full = torch.gather(full, 1, restore[..., None].expand(-1, -1, Dd))  # back in patch order
        z = torch.cat([z[:, :1], full], 1) + self.decoder_pos_embed.to(z.dtype)
        pred = self.decoder_pred(self.decoder_norm(self.decoder_blocks(z)))[:, 1:]  # (B, L, p*p*C)
        return {"pred": pred, "target": patchify(x, self.patch_size), "mask": mask}

    def encoder_kwargs(self) -> dict:
        blk = self.encoder.blocks
        return dict(in_chans=self.in_chans, image_size=self.image_size, patch_size=self.patch_size,
                    embed_dim=self.encoder.embed_dim, depth=len(blk), num_heads=blk[0].attn.num_heads)


@register("vit", kind="image")
class ViTClassifier(nn.Module):
    """The MAE's encoder → pooled tokens (mean of the patch tokens, or the class token) → LayerNorm
    → linear head. Outputs as `models.timm_classifier.TimmClassifier` (binary: "logit")."""

    def __init__(self, in_chans: int, image_size: int, patch_size: int, embed_dim: int, depth: int, num_heads: int,
                 n_outputs: int = 1, pool: str = "avg", drop_rate: float = 0.0, drop_path_rate: float = 0.0):
        super().__init__()
        if pool not in ("avg", "token"):
            raise ValueError(f"pool {pool!r}: avg or token")
        self.encoder = vit_encoder(in_chans, image_size, patch_size, embed_dim, depth, num_heads, drop_path_rate)
        self.image_size, self.pool = image_size, pool
        self.head = nn.Sequential(nn.LayerNorm(embed_dim), nn.Dropout(drop_rate), nn.Linear(embed_dim, n_outputs))
        self.binary = n_outputs == 1

    def features(self, x):
        tokens = self.encoder.forward_features(_resize(x, self.image_size))  # (B, 1 + L, D)
        return tokens[:, 1:].mean(1) if self.pool == "avg" else tokens[:, 0]

    def forward(self, x):
        return classifier_outputs(self.head(self.features(x)), self.binary)


def layer_index(name: str, depth: int) -> int:
    """Depth of a parameter for layer-wise LR decay: 0 the embeddings, i + 1 block i, depth + 1 the rest."""
    if name.startswith(("encoder.cls_token", "encoder.pos_embed", "encoder.patch_embed")):
        return 0
    if name.startswith("encoder.blocks."):
        return int(name.split(".")[2]) + 1
    return depth + 1
