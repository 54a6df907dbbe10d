"""Where each attention layer's queries, keys, values and head outputs can be read.

Capture does not rely on ``attn_drop`` (never called by timm's fused path) nor on switching
the model's attention implementation: it reads the per-head queries and keys the layer
computes anyway (timm: the outputs of ``q_norm`` / ``k_norm``, which are ``nn.Identity``
without qk-norm; Hugging Face: ``q_proj`` / ``k_proj``) and forms softmax(q k^T * scale)
itself, exactly as the model's own math path does. The forward pass itself is the model's,
untouched, so its outputs are bit-identical with and without capture.

Gradients with respect to the attention come from the same places: with O_h = A_h V_h the
head outputs, dL/dA_h = (dL/dO_h) V_h^T, where V_h is read from the value projection and
dL/dO_h is the gradient at the input of the output projection (timm: ``attn.norm``; HF:
``o_proj``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from vitprobe.attention.layout import TokenLayout
from vitprobe.errors import UserError
from vitprobe.models.loaded import LoadedModel

Split = Callable[[torch.Tensor], torch.Tensor]


@dataclass
class AttentionSite:
    """One self-attention layer of a model.

    ``q_module`` / ``k_module`` / ``v_module`` produce the queries, keys and values (``split_*``
    turns their outputs into (B, heads, N, head_dim)); ``out_module``'s input is the
    concatenation of the head outputs (B, N, heads * head_dim).
    """

    index: int
    q_module: nn.Module
    k_module: nn.Module
    v_module: nn.Module
    out_module: nn.Module
    num_heads: int
    head_dim: int
    scale: float
    split_q: Split
    split_k: Split
    split_v: Split
    scale_queries_first: bool

    def attention(self, q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
        """softmax(q k^T * scale) in the operation order of the model's own math path."""
        if self.scale_queries_first:  # timm: q = q * scale; q @ k^T; softmax in q's dtype
            return ((q * self.scale) @ k.transpose(-2, -1)).softmax(dim=-1)
        # transformers eager: (q @ k^T) * scaling, softmax in float32
        scores = (q @ k.transpose(-2, -1)) * self.scale
        return scores.softmax(dim=-1, dtype=torch.float32).to(q.dtype)


@dataclass
class AttentionModel:
    """A ViT seen as a list of attention sites, a token layout and a logits function."""

    loaded: LoadedModel
    sites: list[AttentionSite]
    blocks: list[nn.Module]
    kind: str  # "timm" or "hf"

    @property
    def module(self) -> nn.Module:
        return self.loaded.module

    @property
    def num_layers(self) -> int:
        return len(self.sites)

    @property
    def num_heads(self) -> int:
        return self.sites[0].num_heads

    def layout(self, input_size: tuple[int, int]) -> TokenLayout:
        """The token layout for an input of ``input_size`` (H, W)."""
        if self.kind == "timm":
            module = self.module
            return TokenLayout(
                num_prefix_tokens=self.loaded.num_prefix_tokens,
                grid=self.loaded.grid_size(input_size),
                patch_size=self.loaded.patch_size,
                cls_index=0 if getattr(module, "cls_token", None) is not None else None,
                dist_index=1 if getattr(module, "dist_token", None) is not None else None,
            )
        config = self.module.config
        embeddings = _hf_embeddings(self.module)
        ph, pw = _pair(config.patch_size)
        has_cls = getattr(embeddings, "cls_token", None) is not None
        has_dist = getattr(embeddings, "distillation_token", None) is not None
        registers = int(getattr(config, "num_register_tokens", 0) or 0)
        return TokenLayout(
            num_prefix_tokens=int(has_cls) + int(has_dist) + registers,
            grid=(input_size[0] // ph, input_size[1] // pw),
            patch_size=(ph, pw),
            cls_index=0 if has_cls else None,
            dist_index=int(has_cls) if has_dist else None,
        )

    def logits(self, images: torch.Tensor) -> torch.Tensor:
        """The class scores of a forward pass (HF outputs are unwrapped)."""
        return model_logits(self.module, images)


def model_forward(module: nn.Module, images: torch.Tensor):
    """The module's own forward pass on a batch (HF models take ``pixel_values``)."""
    if getattr(module, "config", None) is not None and hasattr(module.config, "model_type"):
        return module(pixel_values=images)
    return module(images)


def output_logits(output) -> torch.Tensor:
    """The (B, classes) logits inside a forward output (HF outputs are unwrapped)."""
    logits = output if isinstance(output, torch.Tensor) else getattr(output, "logits", None)
    if logits is None or logits.dim() != 2:
        raise UserError("the model returns no (batch, classes) logits: a classification head is needed")
    return logits


def model_logits(module: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """``module(images)`` as a (B, classes) tensor, for timm, torchvision and HF classifiers."""
    return output_logits(model_forward(module, images))


def _pair(value) -> tuple[int, int]:
    if isinstance(value, (tuple, list)):
        return int(value[0]), int(value[-1])
    return int(value), int(value)


def _heads_first(num_heads: int, head_dim: int) -> Split:
    def split(x: torch.Tensor) -> torch.Tensor:
        b, n, _ = x.shape
        return x.view(b, n, num_heads, head_dim).transpose(1, 2)
    return split


def _timm_value(num_heads: int, head_dim: int) -> Split:
    def split(qkv: torch.Tensor) -> torch.Tensor:
        b, n, _ = qkv.shape
        return qkv.reshape(b, n, 3, num_heads, head_dim)[:, :, 2].transpose(1, 2)
    return split


def _identity(x: torch.Tensor) -> torch.Tensor:
    return x


_TIMM_PARTS = ("qkv", "q_norm", "k_norm", "norm", "num_heads", "head_dim", "scale")


def _timm_sites(module: nn.Module) -> tuple[list[AttentionSite], list[nn.Module]]:
    blocks = list(module.blocks)
    sites = []
    for index, block in enumerate(blocks):
        attn = getattr(block, "attn", None)
        missing = [part for part in _TIMM_PARTS if not hasattr(attn, part)]
        if attn is None or missing:
            raise UserError(
                f"block {index} of {type(module).__name__} has an attention module "
                f"({type(attn).__name__}) that vitprobe cannot read (missing {missing}); "
                "supported: timm's standard Attention")
        heads, dim = int(attn.num_heads), int(attn.head_dim)
        sites.append(AttentionSite(
            index=index, q_module=attn.q_norm, k_module=attn.k_norm, v_module=attn.qkv,
            out_module=attn.norm, num_heads=heads, head_dim=dim, scale=float(attn.scale),
            split_q=_identity, split_k=_identity, split_v=_timm_value(heads, dim),
            scale_queries_first=True))
    return sites, blocks


def _hf_embeddings(module: nn.Module) -> nn.Module:
    for sub in module.modules():
        if hasattr(sub, "patch_embeddings"):
            return sub
    raise UserError(f"{type(module).__name__}: no patch embeddings found")


def _hf_sites(module: nn.Module) -> tuple[list[AttentionSite], list[nn.Module]]:
    attentions = [m for m in module.modules()
                  if all(hasattr(m, p) for p in ("q_proj", "k_proj", "v_proj", "o_proj", "scaling"))]
    blocks = [m for m in module.modules()
              if any(child in attentions for child in m.children())]
    expected = int(module.config.num_hidden_layers)
    if len(attentions) != expected:
        raise UserError(f"{type(module).__name__}: found {len(attentions)} readable attention "
                        f"layers, but the config has {expected}")
    sites = []
    for index, attn in enumerate(attentions):
        heads = int(getattr(attn, "num_attention_heads", module.config.num_attention_heads))
        dim = int(attn.head_dim)
        split = _heads_first(heads, dim)
        sites.append(AttentionSite(
            index=index, q_module=attn.q_proj, k_module=attn.k_proj, v_module=attn.v_proj,
            out_module=attn.o_proj, num_heads=heads, head_dim=dim, scale=float(attn.scaling),
            split_q=split, split_k=split, split_v=split, scale_queries_first=False))
    return sites, blocks


def attention_model(loaded: LoadedModel) -> AttentionModel:
    """Describe the attention layers of a timm or Hugging Face ViT; a UserError otherwise."""
    module = loaded.module
    if hasattr(module, "blocks") and hasattr(module, "patch_embed") and hasattr(module, "num_prefix_tokens"):
        sites, blocks = _timm_sites(module)
        kind = "timm"
    elif getattr(module, "config", None) is not None and hasattr(module.config, "num_hidden_layers"):
        sites, blocks = _hf_sites(module)
        kind = "hf"
    else:
        raise UserError(f"{loaded.label} ({type(module).__name__}) has no attention layers that "
                        "vitprobe can read: attention analyses need a timm or transformers ViT")
    if not sites:
        raise UserError(f"{loaded.label} has no attention layers")
    return AttentionModel(loaded=loaded, sites=sites, blocks=blocks, kind=kind)
