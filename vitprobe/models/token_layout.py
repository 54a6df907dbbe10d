"""Where the prefix tokens and the patch grid sit in a ViT's token sequence.

timm orders tokens ``[cls, dist?, registers..., patches]`` (``num_prefix_tokens`` counts all
that precede the patches); Hugging Face DeiT orders them ``[cls, dist, patches]``. The patch
grid is read from the model for the actual input size and checked against the number of
tokens the model really produced, so nothing here assumes 14x14, square grids or ``[1:]``.
"""

from __future__ import annotations

from dataclasses import dataclass

from vitprobe.errors import UserError


@dataclass(frozen=True)
class TokenLayout:
    """The token layout of one forward pass.

    ``cls_index`` / ``dist_index`` are the positions of the class and distillation tokens
    (``None`` when the model has none); ``grid`` is (rows, cols) of the patch tokens, which
    follow the ``num_prefix_tokens`` prefix tokens in row-major order; ``patch_size`` is the
    patch (height, width) in input pixels.
    """

    num_prefix_tokens: int
    grid: tuple[int, int]
    patch_size: tuple[int, int]
    cls_index: int | None = 0
    dist_index: int | None = None

    @property
    def num_patches(self) -> int:
        return self.grid[0] * self.grid[1]

    @property
    def num_tokens(self) -> int:
        return self.num_prefix_tokens + self.num_patches

    def source_index(self, source: str) -> int:
        """Token index of a map source: ``"cls"`` or ``"dist"``."""
        index = {"cls": self.cls_index, "dist": self.dist_index}.get(source, -1)
        if index == -1:
            raise UserError(f"unknown map source {source!r}; choose 'cls', 'dist' or 'both'")
        if index is None:
            raise UserError(f"the model has no {source} token, so there is no {source} map")
        return index

    def sources(self, source: str) -> list[str]:
        """``"both"`` expands to the class and the distillation token."""
        names = ["cls", "dist"] if source == "both" else [source]
        for name in names:
            self.source_index(name)
        return names

    def check(self, num_tokens: int) -> None:
        if num_tokens != self.num_tokens:
            raise UserError(
                f"the model produced {num_tokens} tokens, but its layout says "
                f"{self.num_prefix_tokens} prefix tokens + a {self.grid[0]}x{self.grid[1]} grid "
                f"= {self.num_tokens}")
