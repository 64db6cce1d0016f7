"""A training run's settings: one dataclass, read from a YAML file and the command line.

Precedence: the dataclass defaults < `--config FILE.yaml` < options given on the command line
(with `--resume`, the run's own config.yaml replaces the defaults: resume.py). A run directory
keeps the resolved settings in `config.yaml`; `--resume` and `pdcr-seg eval` read them back.

Every value, from whichever source, is checked and converted against the field's declared type
(`from_dict`): YAML reads `1e-3` as a string, which becomes the float 0.001; `pdcr: "no"` (a
string where true/false is expected), `pdcr_layers: enc2` (a string where a list is expected) or
`epochs: three` are one-line errors naming the key. `validate` then checks the values' ranges.

Versions: a run's config records every setting that changes what it trains, library defaults
included (PDCR's temperature, patch-series reduction, cross-layer N; UAFR's head width), so that
a later change of a default cannot change what an old run is rebuilt as. `config_version` says
which rules wrote it; `from_run` reads a run's saved config (config.yaml, a checkpoint's) and
fills what an older version did not record with the values that version trained with (`upgrade`).
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import re
import types
import typing
from dataclasses import dataclass
from pathlib import Path

import yaml


class ConfigError(ValueError):
    """A bad setting; the message is one line naming it."""


# 0: before versions, and before the paper's defaults (a config without pdcr_preset): PDCR at
#    tau 0.5, the patch series summed, a cross-layer pair at each layer's own N, on encoder
#    stages 2-4 and the pair; UAFR's head min(C, 64) wide. (Two unreleased development snapshots
#    already had version 1's loss defaults or head without naming pdcr_preset; their configs are
#    read as version 0, so a resume or eval of such a run needs its settings given explicitly.)
# 1: the paper's defaults (a config with pdcr_preset but no version): tau 1, the patch series
#    averaged, 32 x 32 cross-layer samples, --pdcr with the decoder, UAFR's head 16 wide; no
#    gradient-balance measurement.
# 2: every setting above recorded (pdcr_tau, pdcr_patch_reduction, pdcr_cross_samples,
#    uafr_hidden), the gradient balance measured (balance_every), pdcr_target_ratio.
CONFIG_VERSION = 2


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
    pdcr_patch_reduction: str = "mean"  # over the patch series: mean (Section V-C2 (3)) | sum (eq. 12 printed)
    pdcr_tau: float = 1.0  # temperature of eq. 9 (the paper gives none; the authors' released value)
    pdcr_cross_samples: int | None = 32  # N on each layer of a cross pair (the authors'); None: each layer's own
    # the weight from the gradient balance: measure ||grad PDCR|| / ||grad seg|| on the first
    # pdcr_calibration_steps steps measured at pdcr_weight (they train with the segmentation loss
    # alone), then pdcr_weight x target / their median, fixed
    pdcr_target_ratio: float | None = None
    pdcr_calibration_steps: int = 5
    uafr: bool = False
    uafr_layers: list[str] | None = None  # None: every encoder and decoder stage
    uafr_hidden: int | None = 16  # hidden channels of UAFR's head (the authors'); None: min(C, 64)
    # measurement: the gradient balance (pdcr_seg.balance) at step 0 and every balance_every steps; 0: never
    balance_every: int = 15  # a measured step costs about 1.5 steps (CPU): +3.3 % on average
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
    out: str | None = None  # the run directory; None: a new runs/<date>-<time>-<model>
    config_version: int = CONFIG_VERSION  # the rules that wrote this config (module docstring)

    def validate(self) -> "TrainConfig":
        """Checks every setting (ranges, the model's name, the device) and makes a folder data
        path absolute, so that a run's config.yaml works from any directory; returns self."""
        def need(condition, message):
            if not condition:
                raise ConfigError(message)

        def finite(value) -> bool:
            return math.isfinite(value)

        need(self.image_size >= 16, f"--image-size must be >= 16, got {self.image_size}")
        need(self.dims in (2, 3), f"--dims must be 2 or 3, got {self.dims}")
        need(len(self.patch_size) == 3 and min(self.patch_size) >= 1,
             f"--patch-size must be three sizes D H W, got {self.patch_size}")
        need(self.samples_per_epoch >= 1, f"--samples-per-epoch must be >= 1, got {self.samples_per_epoch}")
        need(finite(self.fraction) and 0 < self.fraction <= 1, f"--fraction must be in (0, 1], got {self.fraction}")
        need(self.epochs >= 1, f"--epochs must be >= 1, got {self.epochs}")
        need(self.max_steps is None or self.max_steps >= 1, f"--max-steps must be >= 1, got {self.max_steps}")
        need(self.batch_size >= 1, f"--batch-size must be >= 1, got {self.batch_size}")
        need(finite(self.lr) and self.lr > 0, f"--lr must be a finite number > 0, got {self.lr}")
        need(finite(self.weight_decay) and self.weight_decay >= 0,
             f"--weight-decay must be a finite number >= 0, got {self.weight_decay}")
        need(finite(self.pdcr_weight) and self.pdcr_weight >= 0,
             f"--pdcr-weight must be a finite number >= 0, got {self.pdcr_weight}")
        need(0 <= self.seed < 2**32, f"--seed must be in 0 .. 2^32 - 1 (numpy's and MONAI's seeds), got {self.seed}")
        need(self.width is None or self.width >= 1, f"--width must be >= 1, got {self.width}")
        need(self.pdcr_mode in ("hierarchical", "receptive_field"),
             f"--pdcr-mode must be hierarchical or receptive_field, got {self.pdcr_mode!r}")
        need(self.pdcr_preset in ("paper", "encoder"),
             f"--pdcr-preset must be paper or encoder, got {self.pdcr_preset!r}")
        need(self.pdcr_pair_reduction in ("sum", "mean"),
             f"--pdcr-pair-reduction must be sum or mean, got {self.pdcr_pair_reduction!r}")
        need(self.pdcr_patch_reduction in ("sum", "mean"),
             f"--pdcr-patch-reduction must be sum or mean, got {self.pdcr_patch_reduction!r}")
        need(finite(self.pdcr_tau) and self.pdcr_tau > 0, f"--pdcr-tau must be a finite number > 0, got {self.pdcr_tau}")
        need(self.pdcr_cross_samples is None or self.pdcr_cross_samples >= 1,
             f"--pdcr-cross-samples must be >= 1, got {self.pdcr_cross_samples}")
        need(self.pdcr_target_ratio is None or (finite(self.pdcr_target_ratio) and self.pdcr_target_ratio > 0),
             f"--pdcr-target-ratio must be a finite number > 0, got {self.pdcr_target_ratio}")
        need(self.pdcr_target_ratio is None or self.pdcr_weight > 0,
             "--pdcr-target-ratio scales --pdcr-weight from the ratio it gives: --pdcr-weight must be > 0")
        need(self.pdcr_calibration_steps >= 1,
             f"--pdcr-calibration-steps must be >= 1, got {self.pdcr_calibration_steps}")
        need(self.uafr_hidden is None or self.uafr_hidden >= 1, f"--uafr-hidden must be >= 1, got {self.uafr_hidden}")
        need(self.balance_every >= 0, f"--balance-every must be >= 0 (0: never), got {self.balance_every}")
        need(self.config_version == CONFIG_VERSION,
             f"config_version {self.config_version}: this pdcr-seg writes version {CONFIG_VERSION}; an older "
             "run's config is read with its own values by --resume and eval, not as settings of a new run")
        need(not (self.pdcr_decoder and self.pdcr_mode == "receptive_field"),
             "--pdcr-decoder needs --pdcr-mode hierarchical: receptive fields are defined for the encoder")
        need(self.num_classes is None or self.num_classes >= 2, f"--num-classes must be >= 2, got {self.num_classes}")
        need(self.workers >= 0, f"--workers must be >= 0, got {self.workers}")
        need(self.overlays >= 0, f"--overlays must be >= 0, got {self.overlays}")
        for pair in self.pdcr_cross or []:
            need(len(pair) == 2, f"--pdcr-cross pairs are A:B, got {':'.join(pair)}")
        for n in self.pdcr_samples or []:
            need(n >= 1, f"--pdcr-samples must be >= 1, got {n}")
        need(self.ignore_index is None or self.ignore_index >= 0,
             f"--ignore-index must be >= 0, got {self.ignore_index}")
        need(not (self.dice_loss and self.ignore_index is not None),
             "--dice-loss does not support --ignore-index (MONAI's DiceCELoss has none)")
        check_model_name(self.model, self.dims)
        check_device(self.device)
        self.data = absolute_data_spec(self.data)
        return self

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


FIELDS = {f.name: f for f in dataclasses.fields(TrainConfig)}
NONE_WORDS = {"uafr_hidden": "wide", "pdcr_cross_samples": "own"}  # the word a setting's None is written as
TYPES = typing.get_type_hints(TrainConfig)


def absolute_data_spec(spec: str) -> str:
    """`folder:PATH` with PATH made absolute (other specs as they are)."""
    if spec.startswith("folder:") and spec != "folder:":
        return "folder:" + str(Path(spec[len("folder:"):]).expanduser().absolute())
    return spec


def check_model_name(name: str, dims: int = 2) -> None:
    """ConfigError unless `name` is a model pdcr_seg builds (for `dims`); reads no data."""
    from .models import MODELS, VOLUME_MODELS

    if name.startswith("monai.") and name not in MODELS:
        from monai.networks import nets

        if not isinstance(getattr(nets, name[len("monai."):], None), type):
            raise ConfigError(f"--model {name}: monai.networks.nets has no {name[len('monai.'):]}")
    elif name not in MODELS:
        close = difflib.get_close_matches(name, MODELS, n=1)
        raise ConfigError(f"--model {name}: unknown model" + (f" (did you mean {close[0]}?)" if close else "")
                          + f"; known: {', '.join(MODELS)}, or monai.<ClassName>")
    if dims == 3 and not (name in VOLUME_MODELS or name.startswith("monai.")):
        raise ConfigError(f"--model {name} is a 2-D model; for --dims 3 use {', '.join(VOLUME_MODELS)}")


def check_device(name: str) -> None:
    """ConfigError unless `name` (auto, cpu, cuda, cuda:N, mps) is a device this machine has."""
    match = re.fullmatch(r"(auto|cpu|cuda|mps)(?::(\d+))?", name)
    if match is None or (match[2] is not None and match[1] != "cuda"):
        raise ConfigError(f"--device {name}: expected auto, cpu, cuda, cuda:N or mps")
    kind = match[1]
    if kind == "cuda":
        import torch

        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise ConfigError(f"--device {name}: no CUDA device is available here (torch {torch.__version__}); "
                              "use --device cpu")
        if match[2] is not None and int(match[2]) >= count:
            raise ConfigError(f"--device {name}: this machine has {count} CUDA device(s), cuda:0 .. cuda:{count - 1}")
    elif kind == "mps":
        import torch

        if not torch.backends.mps.is_available():
            raise ConfigError(f"--device {name}: MPS is not available here; use --device cpu")


def _describe(value) -> str:
    return f"{value!r} ({type(value).__name__})" if not isinstance(value, str) else repr(value)


def convert(key: str, value, kind):
    """`value` as the declared type `kind` of setting `key`, or ConfigError naming the key.

    Numbers may be written as strings (YAML reads 1e-3 as one); nothing else is guessed: a string
    is not a bool or a list, a fraction is not an integer.
    """
    origin, args = typing.get_origin(kind), typing.get_args(kind)
    if origin in (types.UnionType, typing.Union):
        if value is None and type(None) in args:
            return None
        (inner,) = [a for a in args if a is not type(None)]
        return convert(key, value, inner)
    if value is None:
        raise ConfigError(f"{key}: a value is needed, got null")
    if kind is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{key}: expected true or false, got {_describe(value)}")
    if kind is int:
        if isinstance(value, str):
            try:
                value = float(value.strip()) if not re.fullmatch(r"\s*[-+]?\d+\s*", value) else int(value)
            except ValueError:
                raise ConfigError(f"{key}: expected an integer, got {value!r}") from None
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ConfigError(f"{key}: expected an integer, got {_describe(value)}")
    if kind is float:
        if isinstance(value, str):
            try:
                return float(value.strip())
            except ValueError:
                raise ConfigError(f"{key}: expected a number, got {value!r}") from None
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        raise ConfigError(f"{key}: expected a number, got {_describe(value)}")
    if kind is str:
        if isinstance(value, str):
            return value
        raise ConfigError(f"{key}: expected a string, got {_describe(value)}")
    if origin is list:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list, got {_describe(value)} (YAML: [{value}])")
        return [convert(f"{key}[{i}]", item, args[0]) for i, item in enumerate(value)]
    raise TypeError(f"setting {key} has a type the converter does not know: {kind}")  # a new field


def from_dict(values: dict, base: TrainConfig | None = None, source: str = "") -> TrainConfig:
    """`base` (or the defaults) with `values` set, each converted to its field's type; unknown
    keys and values of the wrong type are errors (`source`, e.g. "config file a.yaml", prefixes
    the message)."""
    prefix = f"{source}: " if source else ""
    unknown = sorted(set(values) - set(FIELDS))
    if unknown:
        raise ConfigError(f"{prefix}unknown setting(s) {', '.join(unknown)}; known: {', '.join(FIELDS)}")
    typed = {}
    for key, value in values.items():
        if key == "pdcr_cross" and isinstance(value, list):  # pairs may be written "A:B", as on the command line
            value = [item.split(":") if isinstance(item, str) else item for item in value]
        if value == NONE_WORDS.get(key):  # as on the command line: "wide" (min(C, 64)), "own" (each layer's N)
            value = None
        try:
            typed[key] = convert(key, value, TYPES[key])
        except ConfigError as error:
            raise ConfigError(f"{prefix}{error}") from None
    return dataclasses.replace(base or TrainConfig(), **typed)


def upgrade(values: dict) -> dict:
    """A run's saved config (a dict) in the current version: the settings an older version did not
    record get the values that version trained with (CONFIG_VERSION's comment). A config without
    a version is version 1 if it names a pdcr_preset, else version 0."""
    values = dict(values)
    version = values.get("config_version")
    if version is None:
        version = 1 if "pdcr_preset" in values else 0
    try:
        version = int(version)
    except (TypeError, ValueError):
        raise ConfigError(f"config_version: expected an integer, got {version!r}") from None
    if version > CONFIG_VERSION:
        raise ConfigError(f"config_version {version}: written by a newer pdcr-seg (this one reads up to "
                          f"{CONFIG_VERSION}); update pdcr-seg")
    if version < 1:
        values.setdefault("pdcr_preset", "encoder")
        values.setdefault("pdcr_tau", 0.5)
        # the old pair_reduction "mean" divided the k-summed series by P x N x K: the series'
        # mean over N x K, which is today's patch mean with pair mean
        values.setdefault("pdcr_patch_reduction", "mean" if values.get("pdcr_pair_reduction") == "mean" else "sum")
        values.setdefault("pdcr_cross_samples", None)
        values.setdefault("uafr_hidden", None)
    if version < 2:
        values.setdefault("balance_every", 0)  # never measured
    values["config_version"] = CONFIG_VERSION
    return values


def from_run(values: dict, source: str = "") -> TrainConfig:
    """The TrainConfig of a run's saved config (any version; see `upgrade`)."""
    return from_dict(upgrade(values), source=source)


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
    return {str(key).replace("-", "_"): value for key, value in values.items()}


def save_yaml(config: TrainConfig, path: str | Path) -> None:
    Path(path).write_text(yaml.safe_dump(config.to_dict(), sort_keys=False))


__all__ = ["TrainConfig", "ConfigError", "CONFIG_VERSION", "from_dict", "from_run", "upgrade", "load_yaml", "save_yaml", "FIELDS", "convert",
           "check_device", "check_model_name", "absolute_data_spec"]
