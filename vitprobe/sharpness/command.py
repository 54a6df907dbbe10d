"""``python -m vitprobe sharpness``: top-k Hessian eigenvalues, trace, density, SAM and Keskar
sharpness, per model; with no ``--model`` it compares the demo zoo (ViT vs ResNet, AdamW vs SAM).

``sharpness.csv`` holds tidy rows: ``metric`` = ``eigenvalue`` (``k`` = 1 for the largest, with
``residual`` and ``hvps``), ``trace`` (``std_error``), ``slq_node`` (``weight``, ``vector``),
``sam_sharpness`` (``rho``, ``steps``, ``m``), ``keskar_sharpness`` (``epsilon``), with
``--adaptive`` ``adaptive_worst_linf_sharpness`` and its siblings (``rho``, ``std_error``,
``ci_low``, ``ci_high``, ``m``, ``batches``), with ``--subsets K`` ``eigenvalue`` per ``subset``
and ``eigenvalue_mean`` (``ci_low``, ``ci_high``) over them; every row has
``model``, ``family``, ``optimizer``, ``value``, ``seconds``, ``num_images``, ``num_params``.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import ClassVar, cast

import numpy as np
import pandas as pd

from vitprobe.command import Command, RunContext
from vitprobe.errors import UserError
from vitprobe.models.loaded import LoadedModel
from vitprobe.options import TRAINING_DATA, SharedOptions, option
from vitprobe.report.files import slug
from vitprobe.sharpness.adaptive import DEFAULT_RHO as ADAPTIVE_RHO
from vitprobe.sharpness.adaptive import KINDS, NORMS, adaptive_sharpness
from vitprobe.sharpness.blocks import BlockSpectrumResult, block_spectrum
from vitprobe.sharpness.density import density_of
from vitprobe.sharpness.figures import (
    block_figure,
    density_plot,
    eigenvalue_bars,
    eigenvalue_comparison,
    lambda_1_intervals,
)
from vitprobe.sharpness.keskar import KESKAR_METHODS, KESKAR_STARTS, keskar_sharpness
from vitprobe.sharpness.operator import HessianOperator, KeepGraphs
from vitprobe.sharpness.results import SpectrumResult
from vitprobe.sharpness.sam import sam_sharpness
from vitprobe.sharpness.spectrum import METHODS, Method, spectrum_of
from vitprobe.sharpness.subsets import SubsetsResult, sharpness_subsets, subsets_figure, t_summary
from vitprobe.sharpness.trace import TraceMethod, trace_of
from vitprobe.sharpness.track_command import COMMAND as TRACK

DEFAULT_RHO = 0.05
ADAPTIVE_PREFIXES = ("adaptive_", *(f"{kind}_" for kind in KINDS))


@dataclass(kw_only=True)
class SharpnessOptions(SharedOptions):
    """``vitprobe sharpness``: the eigen-solver, trace, density, SAM and Keskar settings."""

    NUM_IMAGES: ClassVar[int] = 256  # the zoo run: about 22 s of CPU time on one thread for all four models
    DATA: ClassVar[str] = TRAINING_DATA

    top_k: int = option(1, "eigenvalues to compute (default: 1)", metavar="K")
    method: str = option("lanczos", "eigen-solver: lanczos (default), power (baseline), pyhessian "
                                    "(PyHessian's own code)", choices=METHODS)
    tol: float = option(1e-3, "stop when ||Hv - lambda v|| / |lambda| < T for every eigenvalue "
                              "(default: 1e-3; pyhessian: relative change of lambda)", metavar="T")
    max_iter: int = option(100, "most Hessian-vector products (per eigenvalue for power / "
                                "pyhessian)", metavar="N")
    params: str | None = option(help="restrict the Hessian to parameters whose name matches, e.g. "
                                     "'blocks\\.3\\.' or 'layer4'", metavar="REGEX")
    trace: bool = option(False, "also estimate the Hessian trace")
    trace_method: str = option("hutch++", choices=("hutch++", "hutchinson"))
    trace_samples: int = option(60, "Hessian-vector products for the trace (default: 60)",
                                metavar="N")
    density: bool = option(False, "also estimate the eigenvalue density (stochastic Lanczos "
                                  "quadrature)")
    density_vectors: int = option(4, metavar="N")
    density_steps: int = option(48, metavar="M")
    density_sigma: float | None = option(help="kernel standard deviation of the density (default: "
                                              "PyHessian's, sqrt(1e-5 max(1, node range)))",
                                         metavar="S")
    density_no_reorth: bool = option(False, "keep 2 Lanczos vectors instead of M (for models too "
                                            "large for M copies)")
    sam_rho: list[float] | None = option(help=f"SAM sharpness radius, repeatable or a list "
                                              f"(default: {DEFAULT_RHO})", action="extend",
                                         metavar="R")
    sam_steps: int = option(1, "ascent steps (default: 1)", metavar="S")
    sam_adaptive: bool = option(False, "ASAM's scale-invariant ball")
    sam_adaptive_scope: str = option("weights", "parameters ASAM scales: those named *weight* "
                                                "(SamsungLabs' reference, default) or all",
                                     choices=("weights", "all"))
    sam_m: int | None = option(help="m-sharpness: micro-batches of M images", metavar="M")
    no_sam: bool = option(False, "skip SAM sharpness")
    adaptive: bool = option(False, "also adaptive sharpness (Andriushchenko et al. 2023): the "
                                   "worst (or average) loss increase in the ball "
                                   "||delta / |w| ||_p <= rho, per batch of --adaptive-m images, "
                                   "with a 95%% interval over the batches")
    adaptive_rho: list[float] | None = option(
        help="adaptive sharpness radius, repeatable or a list (default: "
             + ", ".join(f"{k} {n} {r:g}" for (k, n), r in ADAPTIVE_RHO.items()) + ")",
        action="extend", metavar="R")
    adaptive_kind: str = option("worst", "worst case (auto-PGD, default) or average case (random "
                                         "draws)", choices=KINDS)
    adaptive_norm: str = option("linf", "the ball's norm (default: linf)", choices=NORMS)
    adaptive_m: int = option(128, "m-sharpness: images per batch (default: 128, the paper's)",
                             metavar="M")
    adaptive_steps: int = option(20, "auto-PGD iterations of the worst case (default: 20)",
                                 metavar="N")
    adaptive_samples: int = option(20, "random draws of the average case (default: 20)",
                                   metavar="N")
    adaptive_plain: bool = option(False, "the non-adaptive ball ||delta||_p <= rho")
    adaptive_normalise_logits: bool = option(False, "the loss on unit-norm centred logits (their "
                                                    "--normalize_logits)")
    keskar: float | None = option(help="also Keskar et al.'s epsilon-sharpness (default EPS: 1e-3)",
                                  nargs="?", const=1e-3, metavar="EPS")
    keskar_method: str = option("lbfgsb", "Keskar maximisation: L-BFGS-B, as the paper, or "
                                          "projected sign ascent", choices=KESKAR_METHODS)
    keskar_start: str = option("corner", "where the Keskar ascent starts in the box (default: its "
                                         "sign corner)", choices=KESKAR_STARTS)
    per_block: bool = option(False, "also the leading eigenvalue of each block's Hessian (every "
                                    "transformer block or CNN stage; Zhang et al. 2024), with a "
                                    "figure of lambda_1 against depth")
    block: list[str] | None = option(help="a block for --per-block, repeatable (default: every "
                                          "transformer block or CNN stage with parameters)",
                                     action="append", metavar="NAME")
    subsets: int | None = option(
        help="how sure lambda_1 is: the top-k eigenvalues (and --trace) on K disjoint subsets of "
             "--num-images images each (K x N images in all), as mean, std and a 95%% interval, "
             "and a figure of lambda_1 against the number of images; the comparison figure then "
             "shows each model's lambda_1 with that interval", metavar="K")
    memory_budget: float | None = option(help="GB the gradient graphs may take (default: half of the free "
                                               "memory): decides kept graphs and images per backward",
                                          metavar="GB")
    micro_batch: int | None = option(help="images per backward in Hessian-vector products "
                                          "(default: the batch; halved on a CUDA out-of-memory "
                                          "error until it fits)", metavar="M")
    allow_tf32: bool = option(False, "let CUDA use TF32 matmuls in second-order work (default: "
                                     "float32)")
    basis: str = option("auto", "where Lanczos keeps its vectors (default: the GPU when they fit)",
                        choices=("auto", "device", "host"))
    keep_graphs: str = option("auto", "keep per-batch gradient graphs between products (default: "
                                      "when memory allows)", choices=("auto", "yes", "no"))

    def check(self) -> None:
        super().check()
        if self.keskar is not None and not (math.isfinite(self.keskar) and self.keskar > 0):
            raise UserError(f"--keskar must be a finite epsilon above 0, got {self.keskar}")
        rhos = self.sam_rho or []
        if not all(math.isfinite(r) and r >= 0 for r in rhos):
            raise UserError(f"--sam-rho must be finite and >= 0, got {rhos}")
        adaptive_rhos = self.adaptive_rho or []
        if not all(math.isfinite(r) and r > 0 for r in adaptive_rhos):
            raise UserError(f"--adaptive-rho must be finite and above 0, got {adaptive_rhos}")
        least_samples = 3 if self.trace_method == "hutch++" else 2
        counts = {"--sam-steps": (self.sam_steps, 1), "--trace-samples": (self.trace_samples, least_samples),
                  "--density-vectors": (self.density_vectors, 1), "--density-steps": (self.density_steps, 1),
                  "--adaptive-m": (self.adaptive_m, 1), "--adaptive-steps": (self.adaptive_steps, 1),
                  "--adaptive-samples": (self.adaptive_samples, 1)}
        if self.sam_m is not None:
            counts["--sam-m"] = (self.sam_m, 1)
        for name, (value, least) in counts.items():
            if value < least:
                raise UserError(f"{name} must be at least {least}, got {value}")
        if self.memory_budget is not None and not (math.isfinite(self.memory_budget) and self.memory_budget > 0):
            raise UserError(f"--memory-budget must be a positive number of GB, got {self.memory_budget}")
        if self.micro_batch is not None and self.micro_batch < 1:
            raise UserError(f"--micro-batch must be at least 1, got {self.micro_batch}")
        if self.subsets is not None and self.subsets < 2:
            raise UserError(f"--subsets needs at least 2 subsets, got {self.subsets}")
        if self.top_k < 1 or not (math.isfinite(self.tol) and self.tol > 0) or self.max_iter < 1:
            raise UserError(f"--top-k and --max-iter must be positive and --tol a finite number above 0 "
                            f"(got {self.top_k}, {self.max_iter}, {self.tol})")
        sigma = self.density_sigma
        if sigma is not None and not (math.isfinite(sigma) and sigma > 0):
            raise UserError(f"--density-sigma must be a finite number above 0, got {sigma}")
        if self.params is not None:
            try:
                re.compile(self.params)
            except re.error as error:
                raise UserError(f"--params {self.params!r} is not a regular expression: {error}") from None


def _labels(model: LoadedModel) -> dict[str, str]:
    return {"family": model.family, "optimizer": str(model.info.get("optimizer", ""))}


def spread_over_subsets(ctx: RunContext[SharpnessOptions], model: LoadedModel, subsets: int) -> SubsetsResult:
    """``--subsets K``: the spread of the leading eigenvalues (and trace) over K disjoint subsets
    of ``--num-images`` images each."""
    args = ctx.options
    data = ctx.data(model, num_images=subsets * ctx.num_images)
    ctx.log(f"sharpness: {model.label} on {subsets} subsets of {ctx.num_images} images")
    result = sharpness_subsets(model, data, subsets=subsets, k=args.top_k, tol=args.tol, trace=args.trace,
                               num_probes=args.trace_samples, params=args.params, seed=args.seed)
    frame = result.to_frame()
    ctx.add_rows(frame.assign(data=data.spec, **_labels(model)))
    ctx.print_table(frame[frame.metric.str.endswith(("_mean", "_std"))][
        ["model", "metric", "k", "value", "ci_low", "ci_high", "subsets", "subset_images"]])
    return result


def run(ctx: RunContext[SharpnessOptions]) -> None:
    args = ctx.options
    keep: KeepGraphs = "auto" if args.keep_graphs == "auto" else args.keep_graphs == "yes"
    rhos = [] if args.no_sam else (args.sam_rho or [DEFAULT_RHO])
    spectra: list[SpectrumResult] = []
    blocks: list[BlockSpectrumResult] = []
    spreads: list[SubsetsResult] = []
    summary: list[dict] = []
    for model in ctx.models():
        with ctx.isolated(model.label):
            data = ctx.data(model)
            extra = _labels(model)
            ctx.log(f"sharpness: {model.label} on {data.num_images} images")
            operator = HessianOperator(model, data, params=args.params, keep_graphs=keep,
                                       micro_batch=args.micro_batch, allow_tf32=args.allow_tf32,
                                       memory_budget=args.memory_budget * 1e9 if args.memory_budget else None)
            spectrum = spectrum_of(operator, k=args.top_k, tol=args.tol, method=cast(Method, args.method),
                                   max_iter=args.max_iter, seed=args.seed, basis=args.basis)
            ctx.choices[model.label] = spectrum.choices
            spectra.append(spectrum)
            ctx.add_rows(spectrum.to_frame().assign(**extra))
            row = {"model": model.label, **extra, "data": data.spec, "images": data.num_images,
                   "loss": spectrum.loss,
                   **{f"lambda_{i + 1}": v for i, v in enumerate(spectrum.eigenvalues)},
                   "hvps": spectrum.total_hvps}
            if args.trace:
                trace = trace_of(operator, method=cast(TraceMethod, args.trace_method), num_probes=args.trace_samples,
                                 seed=args.seed)
                ctx.add_rows(trace.to_frame().assign(**extra))
                row.update(trace=trace.trace, trace_se=trace.std_error)
                row["hvps"] += trace.hvps
            if args.density:
                density = density_of(operator, num_probes=args.density_vectors, max_iter=args.density_steps,
                                     sigma=args.density_sigma, reorthogonalise=not args.density_no_reorth,
                                     seed=args.seed)
                ctx.add_rows(density.to_frame().assign(**extra))
                ctx.save_figure(density_plot(density), f"density-{slug(model.label)}")
                row["hvps"] += density.hvps
            operator.release()
            if args.per_block:
                per_block = block_spectrum(model, data, blocks=args.block, tol=args.tol,
                                           max_iter=args.max_iter, seed=args.seed)
                ctx.add_rows(per_block.to_frame().assign(**extra))
                blocks.append(per_block)
            if rhos:
                sam = sam_sharpness(model, data, rho=rhos, ascent_steps=args.sam_steps, adaptive=args.sam_adaptive,
                                    adaptive_scope=args.sam_adaptive_scope, m=args.sam_m,
                                    params=args.params)
                ctx.add_rows(sam.to_frame().assign(**extra))
                row.update({f"sam_{r:g}": s for r, s in zip(sam.rhos, sam.sharpness)})
            if args.adaptive:
                adaptive = adaptive_sharpness(model, data, rho=args.adaptive_rho, kind=args.adaptive_kind,
                                              norm=args.adaptive_norm, adaptive=not args.adaptive_plain,
                                              m=args.adaptive_m, steps=args.adaptive_steps,
                                              samples=args.adaptive_samples,
                                              normalise_logits=args.adaptive_normalise_logits,
                                              params=args.params, seed=args.seed)
                ctx.add_rows(adaptive.to_frame().assign(**extra))
                row.update({f"{adaptive.metric}_{r:g}": s for r, s in zip(adaptive.rhos, adaptive.sharpness)})
            if args.keskar is not None:
                keskar = keskar_sharpness(model, data, epsilon=args.keskar, method=args.keskar_method,
                                          start=args.keskar_start, params=args.params, seed=args.seed)
                ctx.add_rows(keskar.to_frame().assign(**extra))
                row[f"keskar_{args.keskar:g}"] = keskar.sharpness
            if args.subsets is not None:
                spread = spread_over_subsets(ctx, model, args.subsets)
                spreads.append(spread)
                _, _, low, high = t_summary(spread.eigenvalues[:, 0], spread.confidence)
                row.update(lambda_1_ci_low=low, lambda_1_ci_high=high)
            ctx.save_figure(eigenvalue_bars(spectrum), f"eigenvalues-{slug(model.label)}")
            summary.append(row)
    if spreads:
        ctx.save_figure(lambda_1_intervals(spreads), "eigenvalues")
        ctx.save_figure(subsets_figure(spreads), "lambda1-vs-images")
    elif len(spectra) > 1:
        ctx.save_figure(eigenvalue_comparison(spectra), "eigenvalues")
    if blocks:
        ctx.save_figure(block_figure(blocks), "lambda1-per-block")
    table = pd.DataFrame(summary)
    ctx.print_table(table)
    comparison = compare(table)
    if not comparison.empty:
        ctx.print_table(comparison)


def compare(table: pd.DataFrame) -> pd.DataFrame:
    """Ratios of lambda_1 (and the other sharpness columns): ViT over ResNet for each optimizer,
    SAM over AdamW for each family, where both models are in the table."""
    metrics = [c for c in table.columns if c == "lambda_1" or c == "trace" or c.startswith(("sam_", "keskar_", *ADAPTIVE_PREFIXES))]
    rows = []

    def first(**where) -> pd.Series | None:
        mask = np.logical_and.reduce([table[k] == v for k, v in where.items()])
        return table[mask].iloc[0] if mask.any() else None

    for optimizer in dict.fromkeys(table["optimizer"]):
        vit, cnn = first(family="vit", optimizer=optimizer), first(family="cnn", optimizer=optimizer)
        if vit is not None and cnn is not None:
            rows.append({"comparison": f"ViT / ResNet ({optimizer or 'same optimizer'})",
                         **{m: vit[m] / cnn[m] for m in metrics}})
    for family in dict.fromkeys(table["family"]):
        sam, adamw = first(family=family, optimizer="sam"), first(family=family, optimizer="adamw")
        if sam is not None and adamw is not None:
            rows.append({"comparison": f"SAM / AdamW ({family})", **{m: sam[m] / adamw[m] for m in metrics}})
    return pd.DataFrame(rows)


COMMANDS = [Command(
    name="sharpness",
    help="Hessian eigenvalues, trace and density; SAM and Keskar sharpness (ViT vs ResNet, AdamW vs SAM)",
    options=SharpnessOptions,
    run=run,
), TRACK]
