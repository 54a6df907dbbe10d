"""``LoadedModel``: the one place that knows a model.

Analyses ask it for logits, the token layout and attention sites of a ViT, the feature stages
of a CNN, the input configuration and where it came from, and the class names; they never
inspect an architecture themselves. Families: timm, torchvision, transformers (ViT, DeiT,
DINOv2), ViTs built on ``nn.MultiheadAttention`` / ``nn.TransformerEncoder`` or vit-pytorch,
and any CNN.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, Literal

import torch
from torch import nn

from vitprobe.errors import UserError, first_line
from vitprobe.models import attention_sites as sites
from vitprobe.models.input_config import FLAGS, InputOverrides, inferred_config, pair, timm_config
from vitprobe.models.module_state import module_device
from vitprobe.models.outputs import logits
from vitprobe.models.stages import Stage, feature_stages
from vitprobe.models.token_layout import TokenLayout

Family = Literal["vit", "cnn", "other"]

@dataclass
class LoadedModel:
    """A model ready for analysis.

    ``module`` is in eval mode. ``data_config`` follows timm's ``resolve_data_config``
    (``input_size`` as (C, H, W), ``interpolation``, ``mean``, ``std``, ``crop_pct``,
    ``crop_mode``). For a ViT, ``num_prefix_tokens`` counts the class, distillation and
    register tokens that precede the patch tokens, and ``patch_size`` is (height, width).
    ``input_source`` says where ``data_config`` came from (``inferred`` when the model had none),
    and ``guessed`` what of it was guessed and how (settings the user gave are not).
    """

    module: nn.Module
    label: str
    spec: str
    family: Family
    data_config: dict[str, Any]
    num_prefix_tokens: int = 0
    patch_size: tuple[int, int] | None = None
    num_classes: int | None = None
    class_names: list[str] | None = None
    checkpoint: str | None = None
    checkpoint_sha256: str | None = None
    info: dict[str, Any] = field(default_factory=dict)
    input_source: str = "timm pretrained_cfg"
    guessed: dict[str, str] = field(default_factory=dict)

    @property
    def input_size(self) -> tuple[int, int]:
        """(height, width) of the model's evaluation input."""
        _, h, w = self.data_config["input_size"]
        return int(h), int(w)

    def grid_size(self, input_size: tuple[int, int] | None = None) -> tuple[int, int]:
        """The patch grid (rows, columns) of a ViT for an input of ``input_size`` (H, W).

        Uses ``patch_embed.dynamic_feat_size`` when the timm model has one, so padding and
        non-square inputs give the grid the model really builds.
        """
        if self.patch_size is None:
            raise ValueError(f"{self.label} is not a ViT: it has no patch grid")
        h, w = input_size or self.input_size
        patch_embed = getattr(self.module, "patch_embed", None)
        if patch_embed is not None and hasattr(patch_embed, "dynamic_feat_size") and (
            getattr(patch_embed, "dynamic_img_pad", False)
        ):
            rows, cols = patch_embed.dynamic_feat_size((h, w))
            return int(rows), int(cols)
        ph, pw = self.patch_size
        return h // ph, w // pw

    def normalisation(self, dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
        """The (1, C, 1, 1) mean and std the model's inputs are normalised with."""
        mean, std = (torch.tensor(self.data_config[key], dtype=dtype).view(1, -1, 1, 1)
                     for key in ("mean", "std"))
        return mean, std

    @property
    def in_chans(self) -> int:
        return int(self.data_config["input_size"][0])

    def logits(self, output: object) -> torch.Tensor:
        """The (batch, classes) logits of one of this model's forward outputs."""
        return logits(output)

    def token_layout(self, input_size: tuple[int, int]) -> TokenLayout:
        """Where the prefix tokens and the patch grid sit for an input of ``input_size``."""
        if self.patch_size is None:
            raise UserError(f"{self.label} is not a ViT: it has no token layout")
        prefix = self.num_prefix_tokens
        module = self.module
        timm_tokens = hasattr(module, "num_prefix_tokens")
        has_cls = getattr(module, "cls_token", None) is not None if timm_tokens else prefix > 0
        return TokenLayout(
            num_prefix_tokens=prefix, grid=self.grid_size(input_size), patch_size=self.patch_size,
            cls_index=0 if has_cls else None,
            dist_index=1 if timm_tokens and getattr(module, "dist_token", None) is not None else None)

    @cached_property
    def attention(self) -> sites.AttentionModel:
        """The attention sites and blocks of a ViT; a UserError naming what cannot be read."""
        return sites.attention_model(self)

    def stages(self, input_size: tuple[int, int] | None = None) -> list[Stage]:
        """The feature stages of a CNN for inputs of ``input_size`` (default: the model's)."""
        return feature_stages(self.module, (self.in_chans, *(input_size or self.input_size)))

    def stage_names(self, input_size: tuple[int, int] | None = None) -> list[str]:
        return [stage.name for stage in self.stages(input_size)]

    def block_names(self) -> list[str]:
        """The transformer blocks of a ViT, in forward order."""
        return self.attention.block_names

    def resolve_layer(self, name: str) -> nn.Module:
        """The submodule called ``name`` (``""`` is the model); a UserError listing the candidates."""
        try:
            return self.module.get_submodule(name)
        except AttributeError:
            candidates = self.block_names() if self.family == "vit" else self.stage_names()
            raise UserError(f"{self.label} has no layer {name!r}; its "
                            f"{'blocks' if self.family == 'vit' else 'stages'}: "
                            f"{', '.join(candidates)} (any module name works)") from None

    def with_input(self, overrides: InputOverrides) -> LoadedModel:
        """Apply user input settings; a fixed-size timm ViT is resized to a new input size."""
        if not overrides.given:
            return self
        config = overrides.apply(self.data_config)
        size = tuple(config["input_size"][1:])
        module: Any = self.module  # a timm ViT's set_input_size, where it has one
        if (size != self.input_size and hasattr(module, "set_input_size")
                and not getattr(module, "dynamic_img_size", False)):
            module.set_input_size(img_size=size)
        self.data_config = config
        self.input_source = f"{self.input_source} + command line ({', '.join(overrides.given)})"
        self.guessed = {key: how for key, how in self.guessed.items() if key not in overrides.given}
        return self

    @property
    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.module.parameters())

    def to(self, device: torch.device | str) -> LoadedModel:
        self.module.to(device)
        return self




def _patch_size(module: nn.Module) -> tuple[int, int] | None:
    """A patch size attribute (torchvision, vit-pytorch), else the first convolution whose
    kernel equals its stride (a patchifying stem)."""
    value = getattr(module, "patch_size", None)
    if isinstance(value, (int, tuple, list)):
        return pair(value)
    for sub in module.modules():
        if isinstance(sub, nn.Conv2d) and sub.kernel_size == sub.stride and sub.stride[0] > 1:
            return int(sub.stride[0]), int(sub.stride[1])
    return None


def describe(module: nn.Module, label: str, data_config: dict[str, Any] | None = None,
             input_source: str | None = None) -> LoadedModel:
    """What can be read off ``module`` without running it: family, token layout, input
    configuration (given, timm's, transformers', or inferred from the layers)."""
    hf_model: Any = sites.hf_model_of(module)
    timm_vit: Any = module  # read by duck typing: timm's attributes, where it has them
    patch = None
    prefix = 0
    family: Family
    if hasattr(module, "patch_embed") and hasattr(module, "blocks") and hasattr(module, "num_prefix_tokens"):
        family, prefix = "vit", int(timm_vit.num_prefix_tokens)
        patch = pair(timm_vit.patch_embed.patch_size)
    elif hf_model is not None and hasattr(hf_model.config, "patch_size"):
        family = "vit"
        layout = sites.hf_layout(hf_model, (0, 0))
        prefix, patch = layout.num_prefix_tokens, layout.patch_size
    else:
        attention = bool(sites.generic_sites(module)[0])
        patch = _patch_size(module) if attention else None
        if patch is not None:
            family, prefix = "vit", -1  # counted by the probe
        elif any(isinstance(m, nn.Conv2d) for m in module.modules()) and not (
                attention or sites.unreadable_attention(module)
                or any(type(m).__name__ == "PatchEmbed" for m in module.modules())):
            family = "cnn"
        else:
            family = "other"
    config, source = data_config, input_source or "given"
    guessed: dict[str, str] = {}
    if config is None:
        config, source = timm_config(module), "timm pretrained_cfg"
        if family == "vit" and config is not None:
            img_size = getattr(timm_vit.patch_embed, "img_size", None)
            if img_size is not None:  # the patch embedding knows the resolution it was built for
                config["input_size"] = (config["input_size"][0], *pair(img_size))
    if config is None:
        (config, guessed), source = inferred_config(module, patch), "inferred"
    num_classes = getattr(module, "num_classes", None)
    if hf_model is not None:
        num_classes = hf_model.config.num_labels
    return LoadedModel(module=module.eval(), label=label, spec=label, family=family,
                       data_config=dict(config), num_prefix_tokens=prefix, patch_size=patch,
                       num_classes=int(num_classes) if isinstance(num_classes, int) else None,
                       input_source=source, guessed=guessed)


class _TokenCounter(sites.SiteListener):
    keep_for_gradients = False

    def __init__(self) -> None:
        self.tokens: int | None = None

    def attention(self, index: int, attention: torch.Tensor) -> None:
        if self.tokens is None:
            self.tokens = int(attention.shape[-1])


@torch.no_grad()
def complete(loaded: LoadedModel, check: bool = False) -> LoadedModel:
    """Run the model once on a zero image of its input configuration: this checks that the
    configuration fits, reads the number of classes off the logits, and counts the prefix
    tokens of a ViT whose layout has no attribute to tell (``nn.TransformerEncoder`` ViTs).
    Skipped, unless ``check``, when the token layout is known (a plain module handed to an
    analysis is not run here)."""
    if not check and loaded.num_prefix_tokens >= 0:
        return loaded
    counter = _TokenCounter()
    handles = []
    if loaded.num_prefix_tokens < 0:
        first = sites.generic_sites(loaded.module)[0][0]
        handles = first.register(counter)
    shape = (1, *loaded.data_config["input_size"])
    try:
        with sites.mha_math_path():
            output = loaded.module(torch.zeros(shape, device=module_device(loaded.module)))
    except Exception as error:  # the model's own code rejected the input
        raise UserError(f"{loaded.label} fails on a {shape} input "
                        f"({first_line(error) or type(error).__name__}); give the input it "
                        f"expects with {FLAGS}") from None
    finally:
        for handle in handles:
            handle.remove()
    try:
        loaded.num_classes = int(logits(output).shape[-1])
    except UserError:  # a feature extractor: no classes, and analyses that need them say so
        loaded.num_classes = None
    if loaded.num_prefix_tokens < 0:
        rows, cols = loaded.grid_size()
        prefix = (counter.tokens or 0) - rows * cols
        if prefix < 0:
            raise UserError(f"{loaded.label}: its attention sees {counter.tokens} tokens, fewer than "
                            f"the {rows}x{cols} patches of a {loaded.input_size} input")
        loaded.num_prefix_tokens = prefix
    return loaded


def as_loaded(model: nn.Module | LoadedModel, label: str | None = None,
              data_config: dict[str, Any] | None = None) -> LoadedModel:
    """Wrap a plain module so every analysis can take either; a ``LoadedModel`` passes through."""
    if isinstance(model, LoadedModel):
        return model
    return complete(describe(model, label or type(model).__name__, data_config))


def layer_name(name: str) -> str:
    """``layer 'layer3'``, or ``the output`` for the model itself (``""``), for messages."""
    return f"layer {name!r}" if name else "the output"


def feature_layers(model: nn.Module | LoadedModel, input_size: tuple[int, int] | None,
                   analysis: str, least: int = 1) -> list[str]:
    """:func:`default_layers` for an analysis that reads feature maps; a UserError naming the
    layers ``--layer`` can take when it finds fewer than ``least`` (none: only the output)."""
    loaded = as_loaded(model)
    layers = default_layers(loaded, input_size)
    if layers == [""] or len(layers) < least:
        found = "no blocks or feature stages" if layers == [""] else f"only {', '.join(layers)}"
        raise UserError(f"{analysis} needs at least {least} layer{'s' if least > 1 else ''}, but vitprobe "
                        f"finds {found} in {loaded.label}: name them with --layer (repeatable), e.g. "
                        f"{', '.join(layer_candidates(loaded))} (any module name works)")
    return layers


def layer_candidates(loaded: LoadedModel, limit: int = 10) -> list[str]:
    """Modules near the top of ``loaded`` that hold parameters: names to offer for ``--layer``."""
    names = [name for name, sub in loaded.module.named_modules()
             if name and name.count(".") < 2 and next(sub.parameters(), None) is not None]
    return names[:limit] + ([f"... ({len(names) - limit} more)"] if len(names) > limit else [])


def default_layers(model: nn.Module | LoadedModel, input_size: tuple[int, int] | None = None) -> list[str]:
    """Every transformer block of a ViT (``blocks.0`` ...), every feature stage of a CNN
    (``layer1`` ... of a ResNet, found by :mod:`vitprobe.models.stages`), else the model's
    output (``""``)."""
    loaded = as_loaded(model)
    if loaded.family == "vit":
        return loaded.block_names()
    return loaded.stage_names(input_size) if loaded.family == "cnn" else [""]
