"""Where each attention layer of a ViT can be read, for every family vitprobe loads.

Capture never switches a model's attention implementation and never relies on ``attn_drop``
(which timm's fused path never calls). Each family is read from the computation it already
makes, and forms softmax(q k^T * scale) in the operation order of the model's own math path:

- timm ``Attention``: the per-head queries and keys are the outputs of ``q_norm`` / ``k_norm``
  (``nn.Identity`` without qk-norm); values come from ``qkv``, head outputs enter ``norm``.
- transformers ViT / DeiT / DINOv2 self-attention: ``q_proj`` / ``k_proj`` / ``v_proj``, head
  outputs enter ``o_proj`` (a :class:`TransformersClassifier` wrapper is looked through).
- ``nn.MultiheadAttention`` (torchvision's ``VisionTransformer``, ``nn.TransformerEncoderLayer``,
  any ViT built on them, batch-first or not): queries and keys are recomputed from the layer's
  input with its own ``in_proj`` weights, scaled queries first, as
  ``F.multi_head_attention_forward`` does when it returns weights. PyTorch's fused encoder fast
  path bypasses the module's forward, so capture turns it off (``torch.backends.mha``) for its
  forward pass; outputs then come from the math path (equal to the fast path to float rounding).
- modules that materialise the attention in an ``nn.Softmax`` called ``attend``
  (lucidrains' ``vit-pytorch``): the softmax output itself.

Gradients with respect to the attention (gradient rollout) come from the same places: with
O_h = A_h V_h the head outputs, dL/dA_h = (dL/dO_h) V_h^T; a materialised softmax is
differentiated directly. For ``nn.MultiheadAttention`` the layer's output is replaced, during
gradient capture only, by vitprobe's recomputation from the same weights (the module's own
kernel keeps no head outputs to differentiate).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import nn

from vitprobe.errors import UserError
from vitprobe.models.input_config import pair
from vitprobe.models.token_layout import TokenLayout

if TYPE_CHECKING:
    from vitprobe.models.loaded import LoadedModel

Split = Callable[[torch.Tensor], torch.Tensor]
ToAttentionGrad = Callable[[torch.Tensor], torch.Tensor]

MHA_ARGUMENTS = ("query", "key", "value", "key_padding_mask", "need_weights", "attn_mask")
SUPPORTED = ("timm Attention, transformers ViT/DeiT/DINOv2 self-attention, nn.MultiheadAttention "
             "(torchvision ViT, nn.TransformerEncoder), vit-pytorch Attention")


class SiteListener:
    """What a capture offers the sites it hooks (see :class:`vitprobe.attention.capture.AttentionCapture`)."""

    keep_for_gradients: bool

    def attention(self, index: int, attention: torch.Tensor) -> None:
        """Called once per forward with layer ``index``'s (B, heads, N, N) attention."""

    def gradient_source(self, index: int, tensor: torch.Tensor, to_attention_grad: ToAttentionGrad) -> None:
        """A tensor in the autograd graph whose gradient ``to_attention_grad`` maps to dL/dA."""


@dataclass
class AttentionSite:
    """One self-attention layer: ``module`` is the layer vitprobe reads (named in errors)."""

    index: int
    module: nn.Module
    num_heads: int
    head_dim: int

    def register(self, listener: SiteListener) -> list:
        raise NotImplementedError


def _heads_first(num_heads: int, head_dim: int) -> Split:
    def split(x: torch.Tensor) -> torch.Tensor:
        b, n, _ = x.shape
        return x.view(b, n, num_heads, head_dim).transpose(1, 2)
    return split


def _head_output_grad(num_heads: int, head_dim: int, values: torch.Tensor) -> ToAttentionGrad:
    """dL/dA_h = (dL/dO_h) V_h^T from the gradient of the concatenated head outputs (B, N, h*d)."""
    def to_attention_grad(grad: torch.Tensor) -> torch.Tensor:
        b, n, _ = grad.shape
        return grad.reshape(b, n, num_heads, head_dim).transpose(1, 2) @ values.transpose(-2, -1)
    return to_attention_grad


@dataclass
class ProjectionSite(AttentionSite):
    """Queries and keys are outputs of submodules (timm, transformers)."""

    q_module: nn.Module
    k_module: nn.Module
    v_module: nn.Module
    out_module: nn.Module
    split_q: Split
    split_k: Split
    split_v: Split
    scale: float = 1.0
    scale_queries_first: bool = True
    _query: torch.Tensor | None = field(default=None, repr=False)
    _values: torch.Tensor | None = field(default=None, repr=False)

    def attention_of(self, q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
        """softmax(q k^T * scale) in the operation order of the model's own math path."""
        if self.scale_queries_first:  # timm: q = q * scale; q @ k^T; softmax in q's dtype
            return ((q * self.scale) @ k.transpose(-2, -1)).softmax(dim=-1)
        # transformers eager: (q @ k^T) * scaling, softmax in float32
        scores = (q @ k.transpose(-2, -1)) * self.scale
        return scores.softmax(dim=-1, dtype=torch.float32).to(q.dtype)

    def register(self, listener: SiteListener) -> list:
        def on_query(module, inputs, output):
            self._query = self.split_q(output)

        def on_key(module, inputs, output):
            if self._query is None:
                raise UserError(f"layer {self.index} ({type(self.module).__name__}): keys computed "
                                "before queries; unsupported layout")
            query, self._query = self._query, None
            with torch.no_grad():
                listener.attention(self.index, self.attention_of(query.detach(), self.split_k(output).detach()))

        def on_value(module, inputs, output):
            self._values = self.split_v(output).detach()

        def on_heads(module, inputs):
            if self._values is None:
                raise RuntimeError(f"attention layer {self.index}: its values were not seen before its output")
            listener.gradient_source(self.index, inputs[0],
                                     _head_output_grad(self.num_heads, self.head_dim, self._values))

        handles = [self.q_module.register_forward_hook(on_query),
                   self.k_module.register_forward_hook(on_key)]
        if listener.keep_for_gradients:
            handles += [self.v_module.register_forward_hook(on_value),
                        self.out_module.register_forward_pre_hook(on_heads)]
        return handles


@dataclass
class MultiheadSite(AttentionSite):
    """An ``nn.MultiheadAttention`` used as self-attention."""

    def _projections(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        mha: Any = self.module  # an nn.MultiheadAttention
        if mha._qkv_same_embed_dim:
            weights = mha.in_proj_weight.chunk(3)
        else:
            weights = (mha.q_proj_weight, mha.k_proj_weight, mha.v_proj_weight)
        biases = mha.in_proj_bias.chunk(3) if mha.in_proj_bias is not None else (None,) * 3
        split = _heads_first(self.num_heads, self.head_dim)
        q, k, v = (split(F.linear(x, w, b)) for w, b in zip(weights, biases))
        return q, k, v

    def register(self, listener: SiteListener) -> list:
        mha: Any = self.module  # an nn.MultiheadAttention

        def on_forward(module, args, kwargs, output):
            bound: dict[str, Any] = {**dict(zip(MHA_ARGUMENTS, args)), **kwargs}
            query: torch.Tensor = bound["query"]
            masks = [name for name in ("attn_mask", "key_padding_mask") if bound.get(name) is not None]
            if masks or bound.get("key") is not query or bound.get("value") is not query:
                raise UserError(f"attention layer {self.index} ({type(mha).__name__}) is called with "
                                f"{', '.join(masks) or 'separate keys or values'}: vitprobe reads "
                                "unmasked self-attention only")
            x = query if mha.batch_first else query.transpose(0, 1)
            q, k, v = self._projections(x)
            scores = (q * float(self.head_dim) ** -0.5) @ k.transpose(-2, -1)
            attention = scores.softmax(dim=-1)
            listener.attention(self.index, attention.detach())
            if not listener.keep_for_gradients:
                return None
            heads = (attention @ v).transpose(1, 2).flatten(2)
            listener.gradient_source(self.index, heads, _head_output_grad(self.num_heads, self.head_dim,
                                                                           v.detach()))
            out = F.linear(heads, mha.out_proj.weight, mha.out_proj.bias)
            out = out if mha.batch_first else out.transpose(0, 1)
            return (out, *output[1:]) if isinstance(output, tuple) else out

        return [mha.register_forward_hook(on_forward, with_kwargs=True)]


@dataclass
class SoftmaxSite(AttentionSite):
    """A module whose attention is the output of its ``attend`` softmax (vit-pytorch)."""

    def register(self, listener: SiteListener) -> list:
        def on_softmax(module, inputs, output):
            listener.attention(self.index, output.detach())
            if listener.keep_for_gradients:
                listener.gradient_source(self.index, output, lambda grad: grad)

        attend: Any = self.module.attend
        return [attend.register_forward_hook(on_softmax)]


@dataclass
class AttentionModel:
    """A ViT seen as its attention sites and transformer blocks.

    ``blocks[i]`` (named ``block_names[i]``) is the module whose input is the residual stream
    entering layer i; ``sequence_first`` says that stream is (tokens, batch, channels).
    """

    label: str
    module: nn.Module
    sites: list[AttentionSite]
    blocks: list[nn.Module]
    block_names: list[str]
    layout_of: Callable[[tuple[int, int]], TokenLayout]
    sequence_first: bool = False

    @property
    def num_layers(self) -> int:
        return len(self.sites)

    @property
    def num_heads(self) -> int:
        return self.sites[0].num_heads

    def layout(self, input_size: tuple[int, int]) -> TokenLayout:
        """The token layout for an input of ``input_size`` (H, W)."""
        return self.layout_of((input_size[0], input_size[1]))


def _identity(x: torch.Tensor) -> torch.Tensor:
    return x


def _timm_value(num_heads: int, head_dim: int) -> Split:
    def split(qkv: torch.Tensor) -> torch.Tensor:
        b, n, _ = qkv.shape
        return qkv.reshape(b, n, 3, num_heads, head_dim)[:, :, 2].transpose(1, 2)
    return split


_TIMM_PARTS = ("qkv", "q_norm", "k_norm", "norm", "num_heads", "head_dim", "scale")


def timm_sites(module: nn.Module) -> tuple[list[AttentionSite], list[str]]:
    """Sites and block names of a timm ViT (``blocks.N.attn``)."""
    sites: list[AttentionSite] = []
    names = []
    blocks: Any = module.blocks
    for index, block in enumerate(blocks):
        attn: Any = getattr(block, "attn", None)
        missing = [part for part in _TIMM_PARTS if not hasattr(attn, part)]
        if attn is None or missing:
            raise UserError(
                f"block {index} of {type(module).__name__} has an attention module "
                f"({type(attn).__name__}) that vitprobe cannot read (missing {', '.join(missing)}); "
                f"supported: {SUPPORTED}")
        heads, dim = int(attn.num_heads), int(attn.head_dim)
        sites.append(ProjectionSite(
            index=index, module=attn, num_heads=heads, head_dim=dim, q_module=attn.q_norm,
            k_module=attn.k_norm, v_module=attn.qkv, out_module=attn.norm, scale=float(attn.scale),
            split_q=_identity, split_k=_identity, split_v=_timm_value(heads, dim),
            scale_queries_first=True))
        names.append(f"blocks.{index}")
    return sites, names


def hf_model_of(module: nn.Module) -> nn.Module | None:
    """The transformers model inside ``module`` (itself, or a wrapper's ``hf_model``)."""
    inner = getattr(module, "hf_model", module)
    config = getattr(inner, "config", None)
    return inner if config is not None and hasattr(config, "num_hidden_layers") else None


def hf_sites(hf_model: nn.Module) -> tuple[list[AttentionSite], list[nn.Module]]:
    """Sites and blocks of a transformers ViT, DeiT or DINOv2 (eager attention)."""
    config: Any = hf_model.config
    attentions: list[Any] = [m for m in hf_model.modules()
                  if all(hasattr(m, p) for p in ("q_proj", "k_proj", "v_proj", "o_proj", "scaling"))]
    blocks = [m for m in hf_model.modules() if any(child in attentions for child in m.children())]
    expected = int(config.num_hidden_layers)
    if len(attentions) != expected:
        raise UserError(f"{type(hf_model).__name__}: found {len(attentions)} readable attention "
                        f"layers, but the config has {expected}")
    sites: list[AttentionSite] = []
    for index, attn in enumerate(attentions):
        heads = int(getattr(attn, "num_attention_heads", config.num_attention_heads))
        dim = int(attn.head_dim)
        split = _heads_first(heads, dim)
        sites.append(ProjectionSite(
            index=index, module=attn, num_heads=heads, head_dim=dim, q_module=attn.q_proj,
            k_module=attn.k_proj, v_module=attn.v_proj, out_module=attn.o_proj,
            scale=float(attn.scaling), split_q=split, split_k=split, split_v=split,
            scale_queries_first=False))
    return sites, blocks


def hf_layout(hf_model: nn.Module, input_size: tuple[int, int]) -> TokenLayout:
    """[cls, dist?, registers..., patches] of a transformers ViT, DeiT or DINOv2."""
    config: Any = hf_model.config
    embeddings = next((m for m in hf_model.modules() if hasattr(m, "patch_embeddings")), None)
    if embeddings is None:
        raise UserError(f"{type(hf_model).__name__}: no patch embeddings found")
    ph, pw = pair(config.patch_size)
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


def _is_container(module: nn.Module) -> bool:
    return isinstance(module, (nn.ModuleList, nn.Sequential, nn.ModuleDict))


def generic_sites(module: nn.Module) -> tuple[list[AttentionSite], list[str], bool]:
    """Sites, block names and token order of a ViT built on ``nn.MultiheadAttention`` or on
    vit-pytorch's ``Attention``, in module registration order.

    The block of a site is its parent module, unless the parent is a container (then the
    attention module itself, whose input is the residual stream in vit-pytorch)."""
    block_of = {child: name for name, parent in module.named_modules() if not _is_container(parent)
                for child in parent.children()}
    sites: list[AttentionSite] = []
    block_names: list[str] = []
    batch_first: set[bool] = set()
    for name, sub in module.named_modules():
        if isinstance(sub, nn.MultiheadAttention):
            heads = int(sub.num_heads)
            sites.append(MultiheadSite(index=len(sites), module=sub, num_heads=heads,
                                       head_dim=int(sub.head_dim)))
            batch_first.add(bool(sub.batch_first))
        elif isinstance(getattr(sub, "attend", None), nn.Softmax) and hasattr(sub, "heads"):
            heads = int(sub.heads)
            sites.append(SoftmaxSite(index=len(sites), module=sub, num_heads=heads, head_dim=0))
            batch_first.add(True)
        else:
            continue
        block_names.append(block_of.get(sub, name))
    if len(batch_first) > 1:
        raise UserError(f"{type(module).__name__} mixes batch-first and sequence-first attention layers")
    return sites, block_names, not batch_first.pop() if batch_first else False


def unreadable_attention(module: nn.Module) -> str | None:
    """The class name of an attention-like module vitprobe cannot read, if there is one."""
    for sub in module.modules():
        name = type(sub).__name__
        if name.endswith(("Attention", "SelfAttention")) and not isinstance(sub, nn.MultiheadAttention):
            return name
    return None


@contextmanager
def mha_math_path() -> Iterator[None]:
    """Turn off PyTorch's fused encoder fast path, which never calls ``nn.MultiheadAttention.forward``."""
    enabled = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        yield
    finally:
        torch.backends.mha.set_fastpath_enabled(enabled)


def attention_model(loaded: LoadedModel) -> AttentionModel:
    """The attention sites, blocks and token layout of a loaded ViT of any supported family;
    a UserError naming the module that could not be read otherwise."""
    module = loaded.module
    hf_model = hf_model_of(module)
    if loaded.family == "vit" and hasattr(module, "blocks") and hasattr(module, "num_prefix_tokens"):
        sites, names = timm_sites(module)
        return AttentionModel(label=loaded.label, module=module, sites=sites, blocks=[module.get_submodule(n) for n in names],
                              block_names=names, layout_of=loaded.token_layout)
    if hf_model is not None:
        sites, blocks = hf_sites(hf_model)
        module_names = {m: n for n, m in module.named_modules()}
        return AttentionModel(label=loaded.label, module=module, sites=sites, blocks=blocks,
                              block_names=[module_names[b] for b in blocks],
                              layout_of=lambda size: hf_layout(hf_model, size))
    sites, names, sequence_first = generic_sites(module)
    if not sites or loaded.family != "vit":
        unreadable = unreadable_attention(module)
        what = (f"its attention module {unreadable} is not one vitprobe can read" if unreadable
                else "it has no attention layers" if not sites else "it has no patch embedding")
        raise UserError(f"{loaded.label} ({type(module).__name__}): {what}; attention analyses "
                        f"read {SUPPORTED}")
    return AttentionModel(label=loaded.label, module=module, sites=sites, blocks=[module.get_submodule(n) for n in names],
                          block_names=names, layout_of=loaded.token_layout,
                          sequence_first=sequence_first)
