"""Run timm attention through the math path, and put every flag back afterwards.

timm's ``Attention`` calls the fused ``F.scaled_dot_product_attention`` when its cached
``fused_attn`` flag is true: no attention weights exist, and on CPU the fused kernel has no
double backward ("derivative for aten::_scaled_dot_product_flash_attention_for_cpu_backward
is not implemented"). Second-order work and attention capture both switch the flag off for
the duration and restore it, so the caller's model is left exactly as it was.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel


def fused_attention_modules(model: nn.Module) -> list[Any]:
    """Every submodule that carries timm's ``fused_attn`` switch."""
    return [module for module in model.modules() if hasattr(module, "fused_attn")]


@contextmanager
def math_attention(model: nn.Module) -> Iterator[list[nn.Module]]:
    """Within the block, timm attention modules of ``model`` compute softmax(q k^T) explicitly
    and any other ``scaled_dot_product_attention`` call uses the math kernel.

    Yields the modules whose flag was switched. Flags are restored even on error.
    """
    modules = fused_attention_modules(model)
    saved = [module.fused_attn for module in modules]
    try:
        for module in modules:
            module.fused_attn = False
        with sdpa_kernel(SDPBackend.MATH):
            yield modules
    finally:
        for module, flag in zip(modules, saved):
            module.fused_attn = flag
