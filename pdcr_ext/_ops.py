"""Thin Python layer over torch.ops.pdcr.*: loads the native library and registers the fake
(meta) kernels and the autograd formula with torch.library, so that the ops run under
torch.compile and pass torch.library.opcheck.

``NATIVE`` is False when the extension was not built; the public functions then fall back to the
reference (backend="auto", with a warning) or raise (backend="native").
"""

from __future__ import annotations

import warnings

import torch

try:
    from . import _C  # noqa: F401  (registers torch.ops.pdcr.*)

    NATIVE = True
    IMPORT_ERROR: Exception | None = None
except ImportError as error:  # exercised by a test that hides the built library
    _C = None
    NATIVE = False
    IMPORT_ERROR = error

# True when the extension was built with its CUDA kernels.
HAS_CUDA_KERNELS = NATIVE and bool(_C.has_cuda_kernels())

BACKENDS = ("auto", "native", "reference")
_fallback_warned: set = set()


def unavailable_reason(device: torch.device) -> str | None:
    """Why the native kernels cannot run on `device`, or None when they can."""
    if not NATIVE:
        return f"the native library pdcr_ext._C failed to import ({IMPORT_ERROR})"
    # meta tensors (shape inference, FLOP counting) run the registered fake kernels
    if device.type in ("cpu", "meta") or (device.type == "cuda" and HAS_CUDA_KERNELS):
        return None
    if device.type == "cuda":
        return "pdcr_ext._C was built without its CUDA kernels (rebuild with CUDA, FORCE_CUDA=1)"
    return f"pdcr_ext._C has no kernels for device type {device.type!r}"


def use_native(backend: str, device: torch.device) -> bool:
    """Whether an op on `device` runs the native kernels under `backend`.

    "native" without kernels for the device raises; "auto" falls back to the pure-PyTorch
    reference and warns once per reason, because the reference materialises the N x K matrices
    (O(N K) memory) and a user should learn it here, not from an out-of-memory error later.
    """
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {', '.join(map(repr, BACKENDS))}; got {backend!r}")
    if backend == "reference":
        return False
    reason = unavailable_reason(device)
    if reason is None:
        return True
    if backend == "native":
        raise ValueError(f"backend='native' is unavailable: {reason}")
    if reason not in _fallback_warned:
        _fallback_warned.add(reason)
        warnings.warn(f"pdcr_ext: {reason}; using the pure-PyTorch reference, whose memory grows as "
                      "N x K (pass backend='reference' to choose it knowingly)", RuntimeWarning,
                      stacklevel=3)
    return False


def _loss_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype


def _accumulation_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


if NATIVE:

    @torch.library.register_fake("pdcr::rf_boxes")
    def _rf_boxes_fake(positions, size, stride, offset):
        return positions.new_empty((*positions.shape[:-1], 2 * positions.shape[-1]))

    @torch.library.register_fake("pdcr::foreground_ratios")
    def _foreground_ratios_fake(labels, boxes, num_classes, inside_area, ignore_index=None):
        return labels.new_empty((labels.shape[0], boxes.shape[1], num_classes), dtype=torch.float32)

    @torch.library.register_fake("pdcr::dragsaw_loss")
    def _dragsaw_loss_fake(rows, phi_rows, cols, phi_cols, tau):
        shape = (rows.shape[0], phi_rows.shape[1], rows.shape[1])
        return (
            rows.new_empty(shape, dtype=_loss_dtype(rows.dtype)),
            rows.new_empty(shape, dtype=_accumulation_dtype(rows.dtype)),
        )

    @torch.library.register_fake("pdcr::dragsaw_loss_backward")
    def _dragsaw_loss_backward_fake(grad, rows, phi_rows, cols, phi_cols, lse, tau):
        return rows.new_empty(rows.shape), cols.new_empty(cols.shape)

    def _dragsaw_setup_context(ctx, inputs, output):
        rows, phi_rows, cols, phi_cols, tau = inputs
        if rows.device.type == "cuda" and rows.numel() and cols.numel():  # else no kernel runs
            _check_cuda_backward_fits(rows, phi_rows)
        _, lse = output
        ctx.save_for_backward(rows, phi_rows, cols, phi_cols, lse)
        ctx.tau = tau
        ctx.mark_non_differentiable(lse)

    def _dragsaw_backward(ctx, grad_loss, _grad_lse):
        rows, phi_rows, cols, phi_cols, lse = ctx.saved_tensors
        grad_rows, grad_cols = torch.ops.pdcr.dragsaw_loss_backward(
            grad_loss, rows, phi_rows, cols, phi_cols, lse, ctx.tau
        )
        # The ratios come from the labels: no gradient. In the single-layer case rows and cols
        # are the same tensor and autograd adds the two gradients.
        return grad_rows, None, grad_cols, None, None

    torch.library.register_autograd(
        "pdcr::dragsaw_loss", _dragsaw_backward, setup_context=_dragsaw_setup_context
    )

    def _check_cuda_backward_fits(rows, phi_rows):
        """A direct call of the op that will need a backward (inputs that require grad): refuse
        widths whose CUDA backward does not fit the device now, not in backward().
        pdcr_ext.dragsaw_loss routes them to an exact path instead."""
        from . import _cuda_layout, _cuda_route

        dtype = _cuda_route.DTYPE_NAMES[rows.dtype]
        C, P, M = rows.shape[2], phi_rows.shape[1], phi_rows.shape[3]
        index = rows.device.index if rows.device.index is not None else torch.cuda.current_device()
        limit = _cuda_route.optin_shared_memory(index)
        if _cuda_layout.plan(dtype, C, P, M, limit).backward == "none":
            raise ValueError(
                f"dragsaw_loss: rows has C={C} channels ({dtype}, P={P}, M={M}), too many for the "
                f"CUDA backward kernels on this device ({limit} bytes of shared memory per block); "
                "call pdcr_ext.dragsaw_loss, which takes an exact path for such widths"
            )

    @torch.library.register_fake("pdcr::uafr_reweight")
    def _uafr_reweight_fake(features, logits):
        return (
            features.new_empty(features.shape),
            features.new_empty((features.shape[0], *features.shape[2:]), dtype=_loss_dtype(features.dtype)),
        )

    @torch.library.register_fake("pdcr::uafr_reweight_backward")
    def _uafr_reweight_backward_fake(grad, features, logits):
        return features.new_empty(features.shape), logits.new_empty(logits.shape)

    def _uafr_setup_context(ctx, inputs, output):
        features, logits = inputs
        ctx.save_for_backward(features, logits)
        ctx.mark_non_differentiable(output[1])  # the uncertainty map is for figures

    def _uafr_backward(ctx, grad_out, _grad_uncertainty):
        features, logits = ctx.saved_tensors
        return tuple(torch.ops.pdcr.uafr_reweight_backward(grad_out, features, logits))

    torch.library.register_autograd(
        "pdcr::uafr_reweight", _uafr_backward, setup_context=_uafr_setup_context
    )
