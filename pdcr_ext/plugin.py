"""attach(model, ...): PDCR and UAFR plugged into any segmentation model with forward hooks."""

from __future__ import annotations

from typing import NamedTuple, Sequence

import torch
from torch import nn

from .geometry import _close_names, model_input, receptive_field_of
from .loss import PDCRLoss
from .uafr import UAFR

_CONTAINER = "pdcr_plugin"


class PDCRHandle:
    """What attach() returns: the loss of the last forward, the UAFR maps, and remove()."""

    def __init__(self, model, container, pdcr_layers, uafr_layers, hooks):
        self.model = model
        self.container = container
        self.pdcr_layers = list(pdcr_layers)
        self.uafr_layers = list(uafr_layers)
        self._hooks = hooks
        self._features: dict[str, torch.Tensor] = {}

    @property
    def pdcr(self) -> PDCRLoss | None:
        return getattr(self.container, "pdcr", None)

    @property
    def uafr(self) -> dict[str, UAFR]:
        return {name: self.container.uafr[_key(name)] for name in self.uafr_layers}

    @property
    def uncertainty(self) -> dict[str, torch.Tensor | None]:
        """The last uncertainty map (B, H, W) of every UAFR layer, for figures."""
        return {name: module.uncertainty for name, module in self.uafr.items()}

    @property
    def terms(self) -> dict[str, torch.Tensor]:
        """Per-layer and per-pair terms of the last loss() (detached, before the weight, averaged
        over images), keyed by module name and "a~b" for cross-layer pairs: for logging."""
        return {} if self.pdcr is None else dict(self.pdcr.terms)

    def loss(self, labels: torch.Tensor) -> torch.Tensor:
        """PDCR (eq. 12, weighted) from the features of the model's last forward; labels (B, H, W)
        or (B, 1, H, W)."""
        if self.pdcr is None:
            raise RuntimeError("attach() was called without pdcr_layers: there is no PDCR loss")
        missing = [name for name in self.pdcr_layers if name not in self._features]
        if missing:
            raise RuntimeError(f"call the model before handle.loss(): no features yet from {missing}")
        return self.pdcr([self._features[name] for name in self.pdcr_layers], labels)

    def remove(self) -> None:
        """Removes the hooks and the added modules: the model is as before attach()."""
        for hook in self._hooks:
            hook.remove()
        self._hooks = []
        self._features = {}
        if getattr(self.model, _CONTAINER, None) is self.container:
            delattr(self.model, _CONTAINER)


def _key(name: str) -> str:
    return name.replace(".", "__")


def _dry_run(model: nn.Module, example_input: torch.Tensor, record) -> None:
    """One forward of example_input (eval mode, no grad, training mode restored) calling
    record(name, module, output) for the output of every named module."""
    def hook(name):
        def call(module, inputs, output):
            record(name, module, output)  # returns None: the output is left as it is
        return call

    hooks = [module.register_forward_hook(hook(name)) for name, module in model.named_modules() if name]
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            model(example_input)
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)


def _output_shapes(model: nn.Module, names, example_input):
    """Shapes of the named modules' outputs on one forward of example_input (no grad, eval)."""
    outputs = {}

    def keep(name, module, output):
        outputs.setdefault(name, output)

    _dry_run(model, example_input, keep)
    result = {}
    for name in names:
        out = outputs.get(name)
        if not isinstance(out, torch.Tensor) or out.dim() != example_input.dim():
            got = "no output" if out is None else (tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__)
            raise ValueError(f"layer {name!r} must output a {_shape_doc(example_input.dim())} tensor, got {got}")
        result[name] = tuple(out.shape)
    return result


def _shape_doc(ndim: int) -> str:
    return "(B, C, h, w)" if ndim == 4 else "(B, C, d, h, w)"


def _example_input(model: nn.Module, example_input):
    """The given input, or zeros of (2, C_in, 256, 256) (3-D models: (2, C_in, 64, 64, 64)) with
    C_in from the first convolution."""
    if example_input is not None:
        if not isinstance(example_input, torch.Tensor) or example_input.dim() not in (4, 5):
            raise ValueError("example_input must be a (B, C, H, W) or (B, C, D, H, W) tensor")
        return example_input
    try:
        shape = model_input(model)
    except ValueError:
        raise ValueError("example_input is required: the model has no convolution to infer it from") from None
    parameter = next(model.parameters())
    return torch.zeros(shape, device=parameter.device, dtype=parameter.dtype)


class LayerInfo(NamedTuple):
    name: str  # the name attach() takes
    type: str  # the module's class
    shape: tuple  # its output's shape on the example input


def list_layers(model: nn.Module, example_input: torch.Tensor | None = None) -> list[LayerInfo]:
    """Every named module whose output is a feature map (B, C, h, w) (3-D models: (B, C, d, h, w)),
    in the order they run:
    the names pdcr_layers / uafr_layers / cross_layers of attach() take.

    `print(*pdcr_ext.list_layers(model, torch.zeros(1, 3, 256, 256)), sep="\n")` shows them with
    their output shapes; the paper's choice is the central encoder stages (see the README,
    "Choosing layers").
    """
    example_input = _example_input(model, example_input)
    found: dict[str, LayerInfo] = {}

    def record(name, module, output):
        if isinstance(output, torch.Tensor) and output.dim() == example_input.dim() and name not in found:
            found[name] = LayerInfo(name, type(module).__name__, tuple(output.shape))

    _dry_run(model, example_input, record)
    return list(found.values())


def attach(model: nn.Module, pdcr_layers: Sequence[str] = (), cross_layers=(),
           uafr_layers: Sequence[str] = (), num_classes: int = 2, *, example_input=None,
           uafr_options: dict | None = None, **pdcr_options) -> PDCRHandle:
    """Plug PDCR and UAFR into `model` by module name.

    Args:
        model: any nn.Module whose named modules output (B, C, h, w) tensors (2-D), or
            (B, C, d, h, w) tensors (3-D: MONAI's DynUNet, BasicUNet(spatial_dims=3), ...).
        pdcr_layers: names (as in model.named_modules()) whose outputs PDCR regularises.
        cross_layers: pairs of names (or of indices into pdcr_layers) for cross-layer terms.
        uafr_layers: names whose outputs UAFR re-weights (the re-weighted output is what the rest
            of the model, and PDCR on that layer, see).
        num_classes: M of the label map (UAFR predicts M maps too unless uafr_options say).
        example_input: one input for the dry run that finds each layer's channels (and, in RF
            mode, receptive fields), (B, C, H, W) or (B, C, D, H, W); default zeros of
            (2, C_in, 256, 256), or (2, C_in, 64, 64, 64) for a model whose first convolution is
            an nn.Conv3d.
        uafr_options: keyword arguments of pdcr_ext.UAFR (hidden_channels, kernel_size, ...).
        **pdcr_options: keyword arguments of pdcr_ext.PDCRLoss (mode, samples, patch_sizes, tau,
            weight, reduction, pair_reduction, ignore_index, ...). `samples` may map module names
            to N (e.g. {"enc2": 64, "enc3": 32, "enc4": 16}). In mode="receptive_field" the
            fields are traced from the model unless given.

    Returns:
        PDCRHandle: handle.loss(labels) after a forward; handle.remove() restores the model. The
        UAFR modules and the cross-layer projections become submodules of the model (attribute
        `pdcr_plugin`), so model.parameters() and state_dict() include them; create the
        optimizer after attach().
    """
    if getattr(model, _CONTAINER, None) is not None:
        raise ValueError("the model already has PDCR/UAFR attached; call handle.remove() first")
    modules = dict(model.named_modules())
    pdcr_layers, uafr_layers = list(pdcr_layers), list(uafr_layers)
    for name in pdcr_layers + uafr_layers:
        if name not in modules or name == "":
            raise ValueError(f"unknown layer {name!r}; close names: {_close_names(name, modules)}")
    pairs = []
    for pair in cross_layers:
        a, b = (p if isinstance(p, int) else pdcr_layers.index(p) if p in pdcr_layers else None for p in pair)
        if a is None or b is None or not (0 <= a < len(pdcr_layers) and 0 <= b < len(pdcr_layers)):
            raise ValueError(f"cross_layers pair {pair!r} must name two of pdcr_layers {pdcr_layers}")
        pairs.append((a, b))

    example_input = _example_input(model, example_input)
    shapes = _output_shapes(model, list(dict.fromkeys(pdcr_layers + uafr_layers)), example_input)

    container = nn.Module()
    container.uafr = nn.ModuleDict()
    uafr_options = dict(uafr_options or {})
    uafr_options.setdefault("num_maps", max(num_classes, 2))
    uafr_options.setdefault("spatial_dims", example_input.dim() - 2)
    for name in uafr_layers:
        container.uafr[_key(name)] = UAFR(shapes[name][1], **uafr_options)
    if pdcr_layers:
        if pdcr_options.get("mode") == "receptive_field" and pdcr_options.get("receptive_fields") is None:
            pdcr_options["receptive_fields"] = [
                receptive_field_of(model, name, tuple(example_input.shape)) for name in pdcr_layers]
        container.pdcr = PDCRLoss(num_classes, cross_layers=pairs, layer_names=pdcr_layers,
                                  in_channels=[shapes[name][1] for name in pdcr_layers], **pdcr_options)
    parameter = next(model.parameters(), None)
    if parameter is not None:
        container.to(parameter.device)
    setattr(model, _CONTAINER, container)

    handle = PDCRHandle(model, container, pdcr_layers, uafr_layers, [])

    ndim = example_input.dim()

    def reweight(name):
        def hook(module, inputs, output):
            _check_output(name, output, ndim)
            return container.uafr[_key(name)](output)
        return hook

    def collect(name):
        def hook(module, inputs, output):
            _check_output(name, output, ndim)
            handle._features[name] = output
        return hook

    hooks = [modules[name].register_forward_hook(reweight(name)) for name in uafr_layers]
    hooks += [modules[name].register_forward_hook(collect(name)) for name in pdcr_layers]
    handle._hooks = hooks
    return handle


def _check_output(name, output, ndim: int):
    if not isinstance(output, torch.Tensor) or output.dim() != ndim:
        got = tuple(output.shape) if isinstance(output, torch.Tensor) else type(output).__name__
        raise ValueError(f"layer {name!r} must output a {_shape_doc(ndim)} tensor, got {got}")
