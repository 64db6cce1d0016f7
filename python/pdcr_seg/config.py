"""A training run's settings: one dataclass, read from a YAML file and the command line.

Precedence: the dataclass defaults < `--config FILE.yaml` < options given on the command line.
A run directory keeps the resolved settings in `config.yaml`; `--resume` and `pdcr-seg eval`
read them back.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import yaml


class ConfigError(ValueError):
    """A bad setting; the message is one line naming it."""


@dataclass
class TrainConfig:
    # data
    data: str = "synthetic"  # synthetic | nuclei | lung-ct | bacteria | folder:PATH
    fold: int = 0  # lung-ct: the leave-one-patient-out fold (test patient pat_{fold+1})
    dims: int = 2  # 2: images; 3: volumes (nuclei volume, Decathlon NIfTI folders)
    image_size: int = 128  # 2-D: side of the square tiles
    patch_size: list[int] = dataclasses.field(default_factory=lambda: [16, 32, 32])  # 3-D crops (D, H, W)
    samples_per_epoch: int = 32  # 3-D: random crops per epoch
    num_classes: int | None = None  # None: the data's
    fraction: float = 1.0  # of the training split (limited-data runs)
    augment: bool = True  # the paper's augmentation (MONAI transforms)
    ignore_index: int | None = None  # label value of unlabelled pixels
    # model
    model: str = "unet"  # unet | fcn | deeplabv3plus | deeplabv3plus_resnet | monai.<Name>
    width: int | None = None  # base width; None: the model's (64 for the paper's models)
    # the paper's methods
    pdcr: bool = False
    pdcr_mode: str = "hierarchical"  # hierarchical (H-PDCR) | receptive_field (RF-PDCR)
    pdcr_weight: float = 0.01
    pdcr_preset: str = "paper"  # paper: encoder stages 2-4, decoder stages, pair (2, 3) | encoder: no decoder
    pdcr_layers: list[str] | None = None  # None: the preset's layers of the model
    pdcr_cross: list[list[str]] | None = None  # None: stages (2, 3) in hierarchical mode; [] none
    pdcr_decoder: bool = False  # H-PDCR on the decoder stages too (preset encoder; paper has them)
    pdcr_samples: list[int] | None = None  # N per layer; None: 128, 64, 32, then 8 (the paper)
    pdcr_dense: bool = False  # every position of each PDCR layer (N = h w), beyond the paper
    pdcr_pair_reduction: str = "sum"  # sum (eq. 12) | mean (each term over its pairs)
    uafr: bool = False
    uafr_layers: list[str] | None = None  # None: every encoder and decoder stage
    # optimisation (the paper's: Adam, lr 1e-3, cosine schedule, weight decay 1e-5)
    epochs: int = 20
    max_steps: int | None = None  # stop after this many steps in all (smoke tests)
    batch_size: int = 8
    lr: float = 1e-3
    weight_decay: float = 1e-5
    dice_loss: bool = False  # MONAI DiceCELoss instead of cross-entropy
    seed: int = 0
    # machinery
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    amp: bool = False  # bfloat16 autocast
    sync_bn: bool = False  # SyncBatchNorm across DDP processes
    workers: int = 0  # DataLoader worker processes
    overlays: int = 4  # test tiles drawn in overlays/
    out: str = "runs/latest"

    def validate(self) -> "TrainConfig":
        def need(condition, message):
            if not condition:
                raise ConfigError(message)

        need(self.image_size >= 16, f"--image-size must be >= 16, got {self.image_size}")
        need(self.dims in (2, 3), f"--dims must be 2 or 3, got {self.dims}")
        need(len(self.patch_size) == 3 and min(self.patch_size) >= 1,
             f"--patch-size must be three sizes D H W, got {self.patch_size}")
        need(self.samples_per_epoch >= 1, f"--samples-per-epoch must be >= 1, got {self.samples_per_epoch}")
        need(0 < self.fraction <= 1, f"--fraction must be in (0, 1], got {self.fraction}")
        need(self.epochs >= 1, f"--epochs must be >= 1, got {self.epochs}")
        need(self.max_steps is None or self.max_steps >= 1, f"--max-steps must be >= 1, got {self.max_steps}")
        need(self.batch_size >= 1, f"--batch-size must be >= 1, got {self.batch_size}")
        need(self.lr > 0, f"--lr must be > 0, got {self.lr}")
        need(self.pdcr_mode in ("hierarchical", "receptive_field"),
             f"--pdcr-mode must be hierarchical or receptive_field, got {self.pdcr_mode!r}")
        need(self.pdcr_preset in ("paper", "encoder"),
             f"--pdcr-preset must be paper or encoder, got {self.pdcr_preset!r}")
        need(self.pdcr_pair_reduction in ("sum", "mean"),
             f"--pdcr-pair-reduction must be sum or mean, got {self.pdcr_pair_reduction!r}")
        need(not (self.pdcr_decoder and self.pdcr_mode == "receptive_field"),
             "--pdcr-decoder needs --pdcr-mode hierarchical: receptive fields are defined for the encoder")
        need(self.num_classes is None or self.num_classes >= 2, f"--num-classes must be >= 2, got {self.num_classes}")
        need(self.workers >= 0, f"--workers must be >= 0, got {self.workers}")
        for pair in self.pdcr_cross or []:
            need(len(pair) == 2, f"--pdcr-cross pairs are A:B, got {':'.join(pair)}")
        return self

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


FIELDS = {f.name: f for f in dataclasses.fields(TrainConfig)}


def from_dict(values: dict, base: TrainConfig | None = None) -> TrainConfig:
    """`base` (or the defaults) with `values` set; unknown keys are an error."""
    unknown = sorted(set(values) - set(FIELDS))
    if unknown:
        raise ConfigError(f"unknown setting(s) {', '.join(unknown)}; known: {', '.join(FIELDS)}")
    return dataclasses.replace(base or TrainConfig(), **values)


def load_yaml(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist")
    try:
        values = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as error:
        raise ConfigError(f"config file {path} is not valid YAML: {str(error).splitlines()[0]}") from None
    if not isinstance(values, dict):
        raise ConfigError(f"config file {path} must hold a mapping of settings")
    return {key.replace("-", "_"): value for key, value in values.items()}


def save_yaml(config: TrainConfig, path: str | Path) -> None:
    Path(path).write_text(yaml.safe_dump(config.to_dict(), sort_keys=False))


__all__ = ["TrainConfig", "ConfigError", "from_dict", "load_yaml", "save_yaml", "FIELDS"]
