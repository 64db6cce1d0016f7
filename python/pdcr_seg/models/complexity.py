"""Parameters and multiply-adds of a model, as in Table IV.

Table IV's "FLOPs" column (UNet 120.4 G, FCN 76.5 G, DeepLabV3+ 62.7 G at 512 x 384) counts
multiply-adds (MACs), the convention of the usual profilers (thop, ptflops). PyTorch's
FlopCounterMode counts FLOPs = 2 x MACs; model_complexity returns both. Only the convolutions and
matrix products are counted (normalisation, activations, pooling and interpolation are left out,
as in those profilers). With this count the paper's UNet has 120.0 G and DeepLabV3+ 62.0 G
multiply-adds at 3 x 384 x 512 (Table IV: 120.4 G, 62.7 G).

    python -m pdcr_seg.models.complexity     # the Table-IV-like table at 3 x 384 x 512
"""

from __future__ import annotations

from typing import Iterable, Mapping, Sequence

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode


def model_complexity(model: nn.Module, input_shape: Sequence[int]) -> dict[str, int]:
    """Parameters, FLOPs and MACs of one forward pass on zeros of `input_shape`.

    Args:
        model: the model; it runs in eval mode under no_grad, and its training mode is restored.
            It may live on the meta device (build it under ``with torch.device("meta")``): the
            count needs no data, and nothing is computed.
        input_shape: (C, H, W) (one image), (B, C, H, W), or (B, C, D, H, W) for a volume.

    Returns:
        dict(parameters=int (every parameter, attached plug-ins included), flops=int,
        macs=int = flops // 2).
    """
    shape = tuple(int(v) for v in input_shape)
    if len(shape) == 3:
        shape = (1,) + shape
    if len(shape) not in (4, 5):
        raise ValueError(f"input_shape must be (C, H, W), (B, C, H, W) or (B, C, D, H, W), got {tuple(input_shape)}")
    parameter = next(model.parameters(), None)
    x = torch.zeros(shape, device=parameter.device if parameter is not None else "cpu",
                    dtype=parameter.dtype if parameter is not None else torch.float32)
    counter = FlopCounterMode(display=False)
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad(), counter:
            model(x)
    finally:
        model.train(was_training)
    flops = int(counter.get_total_flops())
    return {"parameters": sum(p.numel() for p in model.parameters()), "flops": flops, "macs": flops // 2}


def format_table(rows: Iterable[Mapping], input_shape: Sequence[int] | None = None) -> str:
    """A Table-IV-like text table: name, parameters (M), GMACs, and with UAFR when the rows have it.

    Args:
        rows: mappings with "name", "parameters" and "macs" (model_complexity plus a name), and
            optionally "uafr": {head name: {"parameters", "macs"}} (the same model with UAFR of
            that head attached), the same heads in every row.
        input_shape: the input the MACs are for, shown in the header.
    """
    size = "" if input_shape is None else " @ " + "x".join(str(int(v)) for v in input_shape)
    head = ["Model", "Parameters (M)", f"GMACs{size}"]
    heads = list(rows[0].get("uafr", {})) if rows else []
    for name in heads:
        head += [f"+UAFR {name} parameters (M)", f"+UAFR {name} GMACs"]
    body = []
    for r in rows:
        line = [str(r["name"]), f"{r['parameters'] / 1e6:.2f}", f"{r['macs'] / 1e9:.1f}"]
        for name in heads:
            line += [f"{r['uafr'][name]['parameters'] / 1e6:.2f}", f"{r['uafr'][name]['macs'] / 1e9:.1f}"]
        body.append(line)
    widths = [max(len(line[i]) for line in [head] + body) for i in range(len(head))]
    fmt = lambda line: "  ".join(  # noqa: E731
        cell.ljust(w) if i == 0 else cell.rjust(w) for i, (cell, w) in enumerate(zip(line, widths)))
    rule = "-" * len(fmt(head))
    return "\n".join([fmt(head), rule] + [fmt(line) for line in body])


# UAFR heads the table compares: the default (the authors' 16 hidden channels) and "wide" (min(C, 64))
UAFR_HEADS = {"(16)": 16, "(wide)": "wide"}


def paper_table(names: Sequence[str] | None = None, input_shape=(3, 384, 512), num_classes: int = 2,
                width: int | None = None, uafr: bool = True) -> str:
    """format_table of the given models (default: every name of MODELS), built on the meta device,
    without UAFR and with UAFR on their paper layers, once per head of UAFR_HEADS (PDCR adds no
    inference cost)."""
    import pdcr_ext

    from . import MODELS, build_model

    rows = []
    for name in names or list(MODELS):
        with torch.device("meta"):
            model = build_model(name, in_channels=input_shape[0], num_classes=num_classes, width=width)
        row = {"name": name, **model_complexity(model, input_shape)}
        if uafr:
            row["uafr"] = {}
            for head, hidden in UAFR_HEADS.items():
                with torch.device("meta"):
                    model = build_model(name, in_channels=input_shape[0], num_classes=num_classes, width=width)
                    pdcr_ext.attach(model, uafr_layers=list(model.paper_layers.uafr_layers()),
                                    num_classes=num_classes, uafr_options={"hidden_channels": hidden},
                                    example_input=torch.zeros(2, input_shape[0], 64, 64))
                with_uafr = model_complexity(model, input_shape)
                row["uafr"][head] = {"parameters": with_uafr["parameters"], "macs": with_uafr["macs"]}
        rows.append(row)
    return format_table(rows, input_shape)


if __name__ == "__main__":
    print(paper_table())
