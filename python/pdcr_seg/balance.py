"""How large PDCR's gradient is next to the segmentation loss's, on the parameters both reach.

PDCR is meant as a regulariser of the segmentation loss (Section V-A: "we add it as a
regularization to cross-entropy loss with a weight of 0.01"). Whether it acts as one depends on
the size of its gradient next to cross-entropy's on the weights they share (the encoder up to the
PDCR layers, and the decoder for decoder layers), which eq. 12's sums over N x N pairs make large.
``gradient_balance`` measures it on a training step and does that step's backward:

    logits = model(images)
    seg, pdcr = seg_loss(logits, labels), handle.loss(labels)
    optimizer.zero_grad(set_to_none=True)
    if step % k == 0:
        balance = gradient_balance(model, seg, pdcr)   # instead of (seg + pdcr).backward()
        print(balance.ratio)                           # ||grad PDCR|| / ||grad seg||
    else:
        (seg + pdcr).backward()
    optimizer.step()

Cost: one extra backward of the PDCR term alone (``torch.autograd.grad`` on the shared
parameters), then the step's ordinary backward of the total; the segmentation gradient is the
total's minus PDCR's. So ``.grad`` after the call is exactly what ``(seg + pdcr).backward()`` gives
(the same call, bit for bit, DistributedDataParallel's all-reduce included), and a measured step
costs one backward through the layers PDCR reaches on top of an ordinary step.

pdcr-seg train measures it at step 0 and every --balance-every steps (train.py), and with
--pdcr-target-ratio sets PDCR's weight from the first steps' ratios (``weight_for_ratio``).
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass
from typing import Iterable

import torch
from torch import nn

import pdcr_ext


@dataclass(frozen=True)
class GradientBalance:
    """Gradient norms of one step on the parameters both losses reach.

    seg_norm: ||d seg / d theta|| over the shared parameters theta (L2 over all their elements).
    pdcr_norm: ||d pdcr / d theta|| over the same parameters (the weighted PDCR term as given).
    ratio: pdcr_norm / seg_norm (inf when seg_norm is 0).
    parameters, elements: how many parameter tensors (and their elements) are shared.
    """

    seg_norm: float
    pdcr_norm: float
    ratio: float
    parameters: int
    elements: int


def reached_parameters(loss: torch.Tensor, parameters: Iterable[nn.Parameter]) -> list[nn.Parameter]:
    """The parameters among `parameters` that `loss`'s autograd graph leads to (a walk over
    grad_fn; nothing is computed)."""
    leaves, seen, stack = set(), set(), [loss.grad_fn]
    while stack:
        node = stack.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        variable = getattr(node, "variable", None)  # an AccumulateGrad node: a leaf tensor
        if variable is not None:
            leaves.add(id(variable))
        stack.extend(next_node for next_node, _ in node.next_functions)
    return [p for p in parameters if id(p) in leaves]


def shared_parameters(model: nn.Module, seg_loss: torch.Tensor, pdcr_loss: torch.Tensor,
                      exclude: Iterable[nn.Parameter] = ()) -> list[nn.Parameter]:
    """The trainable parameters of `model` both losses reach, in model.parameters() order, without
    PDCR's own (the cross-layer projections of every pdcr_ext.PDCRLoss inside the model) and
    without `exclude`."""
    own = {id(p) for module in model.modules() if isinstance(module, pdcr_ext.PDCRLoss)
           for p in module.parameters()}
    own |= {id(p) for p in exclude}
    candidates = [p for p in model.parameters() if p.requires_grad and id(p) not in own]
    by_pdcr = {id(p) for p in reached_parameters(pdcr_loss, candidates)}
    return [p for p in reached_parameters(seg_loss, candidates) if id(p) in by_pdcr]


def gradient_balance(model: nn.Module, seg_loss: torch.Tensor, pdcr_loss: torch.Tensor, *,
                     exclude: Iterable[nn.Parameter] = (), distributed: bool | None = None,
                     step_with_pdcr: bool = True) -> GradientBalance:
    """Backpropagates seg_loss + pdcr_loss into the parameters' .grad (as .backward() on their sum
    does) and returns the two losses' gradient norms on the parameters they share. With
    step_with_pdcr=False, .grad gets seg_loss's gradient alone (PDCR's enters as zeros, so that
    every parameter is still reached, as DistributedDataParallel expects): PDCR is measured but
    does not move the weights (the calibration steps of --pdcr-target-ratio).

    Args:
        model: the model the losses come from (an nn.Module, or its DistributedDataParallel); its
            parameters the step trains. PDCR's cross-layer projections (parameters of a
            pdcr_ext.PDCRLoss inside the model) and parameters only one loss reaches are left out.
        seg_loss: the segmentation loss of the step, a scalar with a graph.
        pdcr_loss: the weighted PDCR term of the step (e.g. handle.loss(labels)), a scalar with a
            graph.
        exclude: more parameters to leave out of the comparison (they still get their .grad).
        distributed: whether the backward averages .grad over processes, so that PDCR's own
            gradient must be averaged too to compare like with like (one all-reduce of the shared
            gradients). Default: whether `model` is a DistributedDataParallel.

    Returns:
        GradientBalance(seg_norm, pdcr_norm, ratio, parameters, elements), Python numbers (one host
        synchronisation). The segmentation gradient is the total's minus PDCR's: in float32 its
        rounding error is about 1e-7 times the total's size, i.e. relative 1e-7 x (1 + ratio).

    Raises:
        ValueError: a loss that is not a scalar with a graph, or no parameter both losses reach.
    """
    for name, loss in (("seg_loss", seg_loss), ("pdcr_loss", pdcr_loss)):
        if not isinstance(loss, torch.Tensor) or loss.numel() != 1 or loss.grad_fn is None:
            raise ValueError(f"{name} must be a scalar tensor with an autograd graph (computed with grad enabled)")
    shared = shared_parameters(model, seg_loss, pdcr_loss, exclude)
    if not shared:
        raise ValueError("no parameter is reached by both seg_loss and pdcr_loss: nothing to compare")
    # what .grad holds before this step's backward (None after zero_grad(set_to_none=True))
    before = [None if p.grad is None else p.grad.detach().clone() for p in shared]
    # the extra backward: PDCR alone, through the layers it reaches, into the shared parameters
    pdcr_grads = torch.autograd.grad(pdcr_loss, shared, retain_graph=True)
    # the step's ordinary backward: .grad = the total's gradient (DDP averages it here)
    (seg_loss + (pdcr_loss if step_with_pdcr else pdcr_loss * 0.0)).backward()
    if distributed is None:
        distributed = isinstance(model, nn.parallel.DistributedDataParallel)
    if distributed and torch.distributed.is_initialized() and torch.distributed.get_world_size() > 1:
        flat = torch.cat([g.reshape(-1) for g in pdcr_grads])
        torch.distributed.all_reduce(flat)
        flat /= torch.distributed.get_world_size()
        pdcr_grads = [chunk.view_as(g) for chunk, g in zip(flat.split([g.numel() for g in pdcr_grads]), pdcr_grads)]
    seg_sq, pdcr_sq = [], []
    for p, old, g_pdcr in zip(shared, before, pdcr_grads):
        total = p.grad if old is None else p.grad - old
        seg_sq.append((total - g_pdcr if step_with_pdcr else total).double().square().sum())
        pdcr_sq.append(g_pdcr.double().square().sum())
    seg_norm = float(torch.stack(seg_sq).sum().sqrt())
    pdcr_norm = float(torch.stack(pdcr_sq).sum().sqrt())
    return GradientBalance(seg_norm=seg_norm, pdcr_norm=pdcr_norm,
                           ratio=pdcr_norm / seg_norm if seg_norm > 0 else float("inf"),
                           parameters=len(shared), elements=sum(p.numel() for p in shared))


def weight_for_ratio(weight: float, ratios: Iterable[float], target: float) -> float:
    """The PDCR weight that puts ||grad PDCR|| / ||grad seg|| at `target`, from `ratios` measured
    at `weight`: weight x target / median(ratios). PDCR's gradient is linear in its weight and the
    segmentation loss's does not depend on it, so the ratio is too (the median, because one odd
    batch should not set the weight of a whole run).

    Raises FloatingPointError when the median is not a finite number > 0 (nothing to scale).
    """
    ratios = [float(r) for r in ratios]
    if not ratios:
        raise ValueError("weight_for_ratio needs at least one measured ratio")
    median = statistics.median(ratios)
    if not (math.isfinite(median) and median > 0):
        raise FloatingPointError(f"the gradient ratio measured at PDCR weight {weight:g} has median {median:g} "
                                 f"(over {len(ratios)} steps): no weight gives ratio {target:g}")
    return weight * target / median


def summarize_measurements(measurements: list[dict]) -> dict:
    """Mean and median of the measured norms and ratios, their count, and the measurements
    themselves (dicts with step, seg_norm, pdcr_norm, ratio, pdcr_weight, calibration), for
    summary.json. The statistics describe the weight the run trains with: the calibration steps
    of --pdcr-target-ratio (measured at the configured weight, before the weight is set) are kept
    in "values" and counted in "calibration_count", but left out of count, mean and median."""
    trained = [m for m in measurements if not m.get("calibration", False)]
    out: dict = {"count": len(trained), "calibration_count": len(measurements) - len(trained)}
    for key in ("ratio", "seg_norm", "pdcr_norm"):
        values = [m[key] for m in trained]
        out[f"{key}_mean"] = statistics.fmean(values) if values else math.nan
        out[f"{key}_median"] = statistics.median(values) if values else math.nan
    out["values"] = list(measurements)
    return out
