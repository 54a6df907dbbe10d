"""Theoretical receptive field and jump of any layer of a CNN, read off its traced graph.

Walking from the input to the layer, every windowed operation (convolution, max or average
pooling) with kernel ``k``, stride ``s``, dilation ``d`` and padding ``p`` maps the field of
output unit 0 along each axis as

    size_out = size_in + (k - 1) * d * jump_in,    jump_out = jump_in * s,
    first_out = first_in - p * jump_in

(Araujo, Norris & Sim 2019, "Computing receptive fields of convolutional neural networks";
the recurrence of Luo et al. 2016 and Dumoulin & Visin 2016). ``first`` is the first input
pixel (index coordinates, negative inside the padding) seen by output unit 0, so unit ``n``
sees ``[first + n * jump, first + n * jump + size - 1]`` and is centred at
``start + n * jump`` with ``start = first + (size - 1) / 2``. Where branches meet (a residual
sum, a concatenation) the field is the union of the branches' fields: the largest one when
they share a centre, as they do in ResNets.

Why ``torch.fx`` and not forward hooks: hooks fire on modules only, so they never see the
functional ``out + shortcut`` of a residual block and cannot tell which tensors a module
consumed; the traced graph holds every operation and its true inputs (timm ResNets trace).
A custom tracer records which graph node is the output of every named module, so a layer can
be any module, leaf or container (``layer3``, ``layer3.1``, ``layer3.1.conv2``).

Operations that mix the whole map (adaptive pooling, a spatial mean, flattening) give a global
field (size ``inf``). Normalisation layers count as pointwise, as in every published
theoretical field (in eval mode BatchNorm is; GroupNorm's statistics would strictly make every
field global). An operation whose spatial effect is unknown raises :class:`UserError` rather
than being guessed.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import nn

from vitprobe.data.batches import DataLike, as_batches
from vitprobe.errors import UserError
from vitprobe.models.input_config import pair
from vitprobe.models.loaded import LoadedModel, as_loaded
from vitprobe.result import Result, analysis


@dataclass(frozen=True)
class Axis:
    """The field of output unit 0 along one axis: input pixels ``first .. first + size - 1``;
    neighbouring units are ``jump`` input pixels apart."""

    first: float
    size: float
    jump: float

    @property
    def start(self) -> float:
        """Centre of unit 0's field, in input pixel index coordinates."""
        return self.first + (self.size - 1) / 2

    def window(self, kernel: int, stride: int, dilation: int, padding: int) -> Axis:
        return Axis(first=self.first - padding * self.jump,
                    size=self.size + (kernel - 1) * dilation * self.jump,
                    jump=self.jump * stride)

    def shift(self, units: int) -> Axis:
        """The same field seen from a tensor padded by ``units`` positions in front."""
        return Axis(self.first - units * self.jump, self.size, self.jump)


GLOBAL_AXIS = Axis(first=-math.inf, size=math.inf, jump=math.nan)


@dataclass(frozen=True)
class TheoreticalField:
    """Theoretical receptive field of one layer's output units (rows axis, columns axis)."""

    layer: str
    rows: Axis
    cols: Axis

    @property
    def is_global(self) -> bool:
        return math.isinf(self.rows.size) or math.isinf(self.cols.size)

    @property
    def size(self) -> tuple[float, float]:
        """Field size in input pixels (rows, columns); ``inf`` when global."""
        return self.rows.size, self.cols.size

    @property
    def jump(self) -> tuple[float, float]:
        """Distance in input pixels between neighbouring units (the effective stride)."""
        return self.rows.jump, self.cols.jump

    @property
    def start(self) -> tuple[float, float]:
        """Centre of unit (0, 0)'s field in input pixel index coordinates."""
        return self.rows.start, self.cols.start

    def centre_of(self, unit: tuple[int, int]) -> tuple[float, float]:
        """Centre of the field of output unit (row, column), in input pixel coordinates."""
        return (self.rows.start + unit[0] * self.rows.jump,
                self.cols.start + unit[1] * self.cols.jump)


Field = tuple[Axis, Axis]
GLOBAL: Field = (GLOBAL_AXIS, GLOBAL_AXIS)
INPUT: Field = (Axis(0.0, 1.0, 1.0), Axis(0.0, 1.0, 1.0))

POINTWISE_MODULES: tuple[type[nn.Module], ...] = (
    nn.Identity, nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.PReLU, nn.ELU, nn.SELU, nn.CELU, nn.GELU,
    nn.SiLU, nn.Mish, nn.Sigmoid, nn.Tanh, nn.Hardswish, nn.Hardsigmoid, nn.Hardtanh,
    nn.Softplus, nn.Dropout, nn.Dropout2d, nn.modules.batchnorm._BatchNorm, nn.GroupNorm,
    nn.modules.instancenorm._InstanceNorm, nn.LocalResponseNorm, nn.ChannelShuffle,
)
POINTWISE_FUNCTIONS = {
    operator.add, operator.sub, operator.mul, operator.truediv, operator.iadd, operator.imul,
    operator.neg, torch.add, torch.sub, torch.mul, torch.div, torch.cat, torch.relu,
    torch.sigmoid, torch.tanh, torch.clamp, F.relu, F.relu6, F.leaky_relu, F.gelu, F.silu,
    F.mish, F.hardswish, F.hardsigmoid, F.hardtanh, F.elu, F.softplus, F.dropout, F.batch_norm,
    F.group_norm,
}
POINTWISE_METHODS = {
    "add", "add_", "sub", "mul", "mul_", "div", "relu", "relu_", "sigmoid", "sigmoid_", "tanh",
    "clamp", "clamp_", "contiguous", "float", "half", "to", "type_as", "clone", "neg",
}
SHAPE_METHODS = {"size", "dim", "numel"}
GLOBAL_MODULES: tuple[type[nn.Module], ...] = (
    nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d, nn.Flatten,
)
GLOBAL_FUNCTIONS = {torch.flatten, F.adaptive_avg_pool2d, F.adaptive_max_pool2d}
# flattening or reshaping a map is taken as global: an upper bound, never an underestimate
GLOBAL_METHODS = {"flatten", "view", "reshape"}
REDUCTION_FUNCTIONS = {torch.mean, torch.sum, torch.amax, torch.max}
REDUCTION_METHODS = {"mean", "sum", "amax", "max"}
SPATIAL_DIMS = {2, 3, -1, -2}


def _window(field: Field, kernel: Any, stride: Any, dilation: Any, padding: Any,
            where: str) -> Field:
    if field is GLOBAL:
        return GLOBAL
    if isinstance(padding, str):
        if padding == "valid":
            padding = 0
        elif pair(stride) == (1, 1):  # 'same': total (k - 1) d, the extra pixel on the far side
            padding = tuple((k - 1) * d // 2 for k, d in zip(pair(kernel), pair(dilation)))
        else:
            raise UserError(f"{where}: padding {padding!r} with a stride is not supported")
    k, s, d, p = pair(kernel), pair(stride), pair(dilation), pair(padding)
    return (field[0].window(k[0], s[0], d[0], p[0]), field[1].window(k[1], s[1], d[1], p[1]))


def _union(fields: list[Field], where: str) -> Field | None:
    """The field of a tensor computed pointwise from several tensors: the union of theirs."""
    if not fields:
        return None
    if any(field is GLOBAL for field in fields):
        return GLOBAL
    axes = []
    for dim in range(2):
        parts = [field[dim] for field in fields]
        if len({part.jump for part in parts}) > 1:
            raise UserError(f"{where}: branches with different jumps "
                            f"{sorted({part.jump for part in parts})} meet here")
        first = min(part.first for part in parts)
        last = max(part.first + part.size - 1 for part in parts)
        axes.append(Axis(first, last - first + 1, parts[0].jump))
    return axes[0], axes[1]


class _ModuleOutputTracer(fx.Tracer):
    """An fx tracer that remembers the graph node each named module returned."""

    def __init__(self) -> None:
        super().__init__()
        self.module_outputs: dict[str, fx.Node] = {}

    def call_module(self, m: nn.Module, forward: Any, args: Any, kwargs: Any) -> Any:
        out = super().call_module(m, forward, args, kwargs)
        if isinstance(out, fx.Proxy):
            self.module_outputs[self.path_of_module(m)] = out.node
        return out


def _tensor_fields(value: Any, fields: dict[fx.Node, Field | None]) -> list[Field]:
    if isinstance(value, fx.Node):
        found = fields.get(value)
        return [] if found is None else [found]
    if isinstance(value, (list, tuple)):
        return [f for item in value for f in _tensor_fields(item, fields)]
    if isinstance(value, dict):
        return [f for item in value.values() for f in _tensor_fields(item, fields)]
    return []


def _argument(node: fx.Node, index: int, name: str, default: Any) -> Any:
    if len(node.args) > index:
        return node.args[index]
    return node.kwargs.get(name, default)


def _reduction_field(node: fx.Node, field: Field) -> Field:
    """A reduction over channels keeps the field; over a spatial axis (or all) it is global."""
    dims = _argument(node, 1, "dim", None)
    if isinstance(dims, fx.Node):  # torch.max(a, b): elementwise
        return field
    if dims is None:
        return GLOBAL
    dims = {int(dims)} if isinstance(dims, int) else {int(d) for d in dims}
    return GLOBAL if dims & SPATIAL_DIMS else field


def _module_field(module: nn.Module, inputs: list[Field], where: str) -> Field | None:
    field = _union(inputs, where)
    if field is None or isinstance(module, POINTWISE_MODULES):
        return field
    if isinstance(module, GLOBAL_MODULES):
        return GLOBAL
    if isinstance(module, (nn.Conv2d, nn.MaxPool2d)):
        return _window(field, module.kernel_size, module.stride, module.dilation, module.padding,
                       where)
    if isinstance(module, nn.AvgPool2d):
        return _window(field, module.kernel_size, module.stride, 1, module.padding, where)
    if isinstance(module, nn.Linear) and field is GLOBAL:
        return GLOBAL
    raise UserError(f"cannot derive a theoretical receptive field through {where} "
                    f"({type(module).__name__})")


def _function_field(node: fx.Node, inputs: list[Field], where: str) -> Field | None:
    field = _union(inputs, where)
    target = node.target
    if field is None or target in POINTWISE_FUNCTIONS:
        return field
    if target in GLOBAL_FUNCTIONS:
        return GLOBAL
    if target in REDUCTION_FUNCTIONS:
        return _reduction_field(node, field)
    if target is operator.getitem and isinstance(node.args[1], int):
        return field  # one element of a tuple output, e.g. the values of max(dim=1)
    if target in (F.max_pool2d, F.avg_pool2d):
        kernel = _argument(node, 1, "kernel_size", None)
        stride = _argument(node, 2, "stride", None) or kernel
        padding = _argument(node, 3, "padding", 0)
        dilation = _argument(node, 4, "dilation", 1) if target is F.max_pool2d else 1
        return _window(field, kernel, stride, dilation, padding, where)
    if target is F.pad and field is not GLOBAL:
        pad = list(_argument(node, 1, "pad", ()))
        if len(pad) < 4:
            raise UserError(f"{where}: padding only the last axis is not supported")
        return field[0].shift(int(pad[2])), field[1].shift(int(pad[0]))
    raise UserError(f"cannot derive a theoretical receptive field through {where} ({target})")


def _method_field(node: fx.Node, inputs: list[Field], where: str) -> Field | None:
    if node.target in SHAPE_METHODS:
        return None
    field = _union(inputs, where)
    if field is None or node.target in POINTWISE_METHODS:
        return field
    if node.target in GLOBAL_METHODS:
        return GLOBAL
    if node.target in REDUCTION_METHODS:
        return _reduction_field(node, field)
    raise UserError(f"cannot derive a theoretical receptive field through {where} "
                    f"(method {node.target!r})")


def layer_fields(model: nn.Module | LoadedModel) -> dict[str, TheoreticalField]:
    """The theoretical field of every named module's output (``""`` is the whole model)."""
    module = as_loaded(model).module
    tracer = _ModuleOutputTracer()
    try:
        graph = tracer.trace(module)
    except Exception as error:  # fx raises many types for untraceable Python control flow
        raise UserError(f"torch.fx cannot trace {type(module).__name__} to derive its "
                        f"theoretical receptive field: {error}") from error
    fields: dict[fx.Node, Field | None] = {}
    placeholders = 0
    for node in graph.nodes:
        where = f"node {node.name!r}"
        inputs = _tensor_fields((node.args, node.kwargs), fields)
        if node.op == "placeholder":
            fields[node] = INPUT if placeholders == 0 else None
            placeholders += 1
        elif node.op == "get_attr":
            fields[node] = None
        elif node.op == "call_module":
            fields[node] = _module_field(module.get_submodule(node.target), inputs,
                                         f"{where} (module {node.target!r})")
        elif node.op == "call_function":
            fields[node] = (None if node.target is getattr
                            else _function_field(node, inputs, where))
        elif node.op == "call_method":
            fields[node] = _method_field(node, inputs, where)
        elif node.op == "output":
            tracer.module_outputs[""] = node.args[0]
    result = {}
    for name, node in tracer.module_outputs.items():
        field = fields.get(node) if isinstance(node, fx.Node) else None
        if field is not None:
            result[name] = TheoreticalField(name, field[0], field[1])
    return result


@dataclass(kw_only=True)
class TheoreticalFieldResult(Result):
    """The theoretical receptive field of each layer asked for, by layer name."""

    fields: dict[str, TheoreticalField]

    INDEX: ClassVar[tuple[str, ...]] = ("metric", "layer", "axis")

    def rows(self) -> list[dict]:
        """``theoretical_size`` and ``theoretical_jump`` per layer and axis (rows, cols), in input
        pixels (``inf`` and NaN for a global field)."""
        return [{"metric": f"theoretical_{what}", "layer": name, "axis": axis_name,
                 "value": float(getattr(axis, what))}
                for name, field in self.fields.items()
                for axis_name, axis in (("rows", field.rows), ("cols", field.cols))
                for what in ("size", "jump")]


@analysis
def theoretical_receptive_field(model: nn.Module | LoadedModel, data: DataLike | None = None, *,
                                layer: str | Sequence[str]) -> TheoreticalFieldResult:
    """Theoretical receptive field (size, jump, centre offset) of the output units of ``layer``.

    ``layer`` is any module name of the model (``"layer2"``, ``"layer2.0.conv1"``, ``"3"`` in an
    ``nn.Sequential``; ``""`` for the model's output), or several. Sizes and jumps are in input
    pixels, per axis (rows, columns). See the module docstring for the recurrence and its
    conventions. The field does not depend on images: ``data`` may be None (given, its image
    count goes in the result's header).
    """
    loaded = as_loaded(model)
    if loaded.family == "vit":
        raise UserError("a theoretical receptive field is defined for convolutional networks; "
                        "every token of a ViT sees the whole image from its first attention block")
    fields = layer_fields(loaded)
    chosen = {}
    for name in [layer] if isinstance(layer, str) else list(layer):
        if name not in fields:
            names = [n for n, _ in loaded.module.named_modules()]
            if name in names:
                raise UserError(f"layer {name!r} returns no spatial tensor that depends on the input")
            raise UserError(f"the model has no layer {name!r}; some of its layers: "
                            f"{', '.join(n for n in names[1:9])}, ...")
        chosen[name] = fields[name]
    images = 0 if data is None else as_batches(data).num_images
    return TheoreticalFieldResult(model=loaded.label, images=images, fields=chosen)
