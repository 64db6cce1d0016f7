"""`pdcr-seg predict`: masks for new images, and UAFR's uncertainty map beside each.

Each image is read as the training data was (data/folder.py: in its EXIF orientation, 8-bit
images / 255, other depths percentile-normalised), its channels matched to the model's (grey <->
RGB), resized to the run's image size, segmented, and the mask resized back to the image's own
size (the logits bilinearly, then the arg-max).

Outputs, per image ``NAME.EXT`` of the input folder (macOS ``._*`` and other hidden files are
skipped):

- ``NAME_mask.png``: a palette PNG whose pixel values are the class indices (0 = background,
  1 .. M-1 the classes; ``numpy.array(PIL.Image.open(p))`` gives them), shown by any viewer
  through its palette: black background, white foreground for two classes, the overlays' colours
  for more;
- ``NAME_uncertainty.png`` (with UAFR): the uncertainty map U in [0, 1] in the magma colours;
- when two inputs share a stem (``a.png``, ``a.jpg``) their outputs keep the extension
  (``a.png_mask.png``, ``a.jpg_mask.png``), so none overwrites another;
- ``predictions.csv``: input, mask, uncertainty, and the error for a file that failed.

A file that cannot be read or segmented is reported and skipped; the others are written, and the
command ends with a non-zero status listing what failed.
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from . import rundir
from .data import DataError
from .data.folder import IMAGE_EXTS, hidden, read_image
from .evaluate import load_run, predict_logits, uncertainty_layer

try:
    from tqdm import tqdm
except ImportError:  # pragma: no cover - tqdm is a dependency
    def tqdm(iterable, **_):
        return iterable


@dataclass
class Outcome:
    input: Path
    mask: Path | None = None
    uncertainty: Path | None = None
    error: str = ""


def inputs_of(path: Path) -> list[Path]:
    """The image files to segment: `path` itself, or the images in the folder `path`."""
    if path.is_file():
        return [path]
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_EXTS and not hidden(p) and p.is_file())
        if not files:
            raise DataError(f"--input {path} holds no images ({', '.join(sorted(IMAGE_EXTS))})")
        return files
    raise DataError(f"--input {path} does not exist")


def output_names(files: list[Path]) -> dict[Path, str]:
    """The output name stem of each input: its stem, or its file name where stems collide."""
    stems: dict[str, int] = {}
    for f in files:
        stems[f.stem.lower()] = stems.get(f.stem.lower(), 0) + 1
    return {f: f.name if stems[f.stem.lower()] > 1 else f.stem for f in files}


def palette(num_classes: int) -> list[int]:
    """A PNG palette (768 values): 0 black; two classes: 1 white; more: the overlays' colours."""
    from .figures import class_colours

    colours = [(0, 0, 0)] + ([(255, 255, 255)] if num_classes == 2 else
                             [tuple(round(255 * c) for c in rgb) for rgb in class_colours(num_classes)])
    flat = [v for rgb in colours for v in rgb]
    return flat + [0] * (768 - len(flat))


def _match_channels(image: np.ndarray, channels: int, path: Path) -> np.ndarray:
    if image.shape[0] == channels:
        return image
    if channels == 1:
        return image.mean(axis=0, keepdims=True)
    if image.shape[0] == 1:
        return np.repeat(image, channels, axis=0)
    raise DataError(f"{path} has {image.shape[0]} channels, the model takes {channels}")


def _save_png(path: Path, image: Image.Image) -> None:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    rundir.atomic_write(path, lambda file: file.write(buffer.getvalue()))


def predict(checkpoint: str | Path, inputs: str | Path, out: str | Path, device: torch.device, *,
            overwrite: bool = False) -> list[Outcome]:
    """Segments every input image into `out` (see the module doc); returns one Outcome per input,
    failed ones with their error. `out` must be new or empty unless `overwrite`."""
    import matplotlib

    out = Path(out)
    rundir.check_output_folder(out, overwrite=overwrite)
    files = inputs_of(Path(inputs))
    model, handle, cfg, state = load_run(checkpoint, device)
    if cfg.dims != 2:
        raise DataError("predict segments 2-D images; for a volume model use `pdcr-seg eval --data folder:PATH`")
    channels, num_classes = state["data"]["in_channels"], state["data"]["num_classes"]
    layer = uncertainty_layer(model, handle)
    colormap = matplotlib.colormaps["magma"]
    colours = palette(num_classes)
    names = output_names(files)
    out.mkdir(parents=True, exist_ok=True)
    outcomes = []
    for path in tqdm(files, desc="predict", unit="image", disable=len(files) < 2, dynamic_ncols=True):
        outcome = Outcome(path)
        outcomes.append(outcome)
        try:
            image = _match_channels(read_image(path), channels, path)
            size = image.shape[-2:]
            x = F.interpolate(torch.from_numpy(image)[None], (cfg.image_size, cfg.image_size), mode="bilinear",
                              antialias=True)
            logits = predict_logits(model, x.to(device))
            logits = F.interpolate(logits, size, mode="bilinear", align_corners=False)
            classes = np.ascontiguousarray(logits.argmax(1)[0].cpu().numpy().astype(np.uint8))
            mask = Image.frombytes("P", (classes.shape[1], classes.shape[0]), classes.tobytes())
            mask.putpalette(colours)
            outcome.mask = out / f"{names[path]}_mask.png"
            _save_png(outcome.mask, mask)
            if layer is not None:
                u = handle.uncertainty[layer][None].float()
                u = F.interpolate(u, size, mode="bilinear", align_corners=False)[0, 0].clamp(0, 1).cpu().numpy()
                outcome.uncertainty = out / f"{names[path]}_uncertainty.png"
                _save_png(outcome.uncertainty, Image.fromarray((colormap(u)[..., :3] * 255).astype(np.uint8)))
        except Exception as error:  # one bad file must not stop thousands of others
            reason = (str(error).splitlines() or [""])[0]
            outcome.error = reason if isinstance(error, DataError) else f"{type(error).__name__}: {reason}"
    table = io.StringIO()
    writer = csv.writer(table)
    writer.writerow(["input", "mask", "uncertainty", "error"])
    for o in outcomes:
        writer.writerow([str(o.input), o.mask.name if o.mask else "", o.uncertainty.name if o.uncertainty else "",
                         o.error])
    rundir.write_text(out / "predictions.csv", table.getvalue())
    return outcomes
