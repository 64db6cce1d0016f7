"""`pdcr-seg predict`: masks for new images, and UAFR's uncertainty map beside each.

Each image is read as the training data was (data/folder.py: 8-bit images / 255, other depths
percentile-normalised), its channels matched to the model's (grey <-> RGB), resized to the run's
image size, segmented, and the mask resized back to the image's own size (nearest neighbour).
Masks are PNGs of class indices; for two classes 0 / 255, the ISIC convention.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from .data import DataError
from .data.folder import IMAGE_EXTS, read_image
from .evaluate import load_run, predict_logits, uncertainty_layer


def _inputs(path: Path) -> list[Path]:
    if path.is_file():
        return [path]
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_EXTS)
        if not files:
            raise DataError(f"--input {path} holds no images ({', '.join(sorted(IMAGE_EXTS))})")
        return files
    raise DataError(f"--input {path} does not exist")


def _match_channels(image: np.ndarray, channels: int, path: Path) -> np.ndarray:
    if image.shape[0] == channels:
        return image
    if channels == 1:
        return image.mean(axis=0, keepdims=True)
    if image.shape[0] == 1:
        return np.repeat(image, channels, axis=0)
    raise DataError(f"{path} has {image.shape[0]} channels, the model takes {channels}")


def predict(checkpoint: str | Path, inputs: str | Path, out: str | Path, device: torch.device) -> list[Path]:
    """Writes <stem>_mask.png (and <stem>_uncertainty.png with UAFR) per image; returns the masks."""
    import matplotlib

    model, handle, cfg, state = load_run(checkpoint, device)
    if cfg.dims != 2:
        raise DataError("predict segments 2-D images; for a volume model use `pdcr-seg eval --data folder:PATH`")
    channels, num_classes = state["data"]["in_channels"], state["data"]["num_classes"]
    layer = uncertainty_layer(model, handle)
    colormap = matplotlib.colormaps["magma"]
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for path in _inputs(Path(inputs)):
        image = _match_channels(read_image(path), channels, path)
        size = image.shape[-2:]
        x = F.interpolate(torch.from_numpy(image)[None], (cfg.image_size, cfg.image_size), mode="bilinear",
                          antialias=True)
        logits = predict_logits(model, x.to(device))
        logits = F.interpolate(logits, size, mode="bilinear", align_corners=False)
        mask = logits.argmax(1)[0].cpu().numpy().astype(np.uint8)
        scale = 255 if num_classes == 2 else 1
        target = out / f"{path.stem}_mask.png"
        Image.fromarray(mask * scale).save(target)
        written.append(target)
        if layer is not None:
            u = handle.uncertainty[layer][None].float()
            u = F.interpolate(u, size, mode="bilinear", align_corners=False)[0, 0].clamp(0, 1).cpu().numpy()
            Image.fromarray((colormap(u)[..., :3] * 255).astype(np.uint8)).save(out / f"{path.stem}_uncertainty.png")
    return written
