"""`--resume`: what checkpoint_last.pt keeps so that a run continues exactly, and what may change.

checkpoint_last.pt is written when the run starts (epoch 0) and after every epoch, atomically
(rundir.save_checkpoint). It holds the model, optimizer and scheduler states, the progress (epochs
and steps done, the history, the best epoch, the run's id) and every random state the next epoch
draws from:

- torch's generator (CPU, and each CUDA device's), numpy's and Python's global generators;
- each numpy RandomState inside the training transforms, found by walking the transform objects
  (MONAI's RandAffined holds three: its own, its RandAffine's and that one's RandAffineGrid's);
- each torch.Generator a module of the model holds (e.g. PDCR's jittered sampling).

The sampler's order comes from a generator seeded by (seed, epoch), and the DataLoader draws its
base seed from torch's generator when an epoch starts; with ``--workers`` each worker re-seeds its
copy of the transforms from that base seed (MONAI's worker_init_fn). So once these states are
restored an epoch replays draw for draw, with or without worker processes (as long as --workers
is the same as before). A run stopped in the middle of an epoch (killed, or Ctrl-C) continues
from the start of that epoch, and ends as the same run never stopped would have: the same losses,
best epoch and test metrics on the CPU (CUDA kernels may not be deterministic themselves).

Only the settings in RESUMABLE may change on resume; any other difference is refused in one line.
"""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .config import ConfigError, TrainConfig, absolute_data_spec, from_run

# Settings a resumed run may change: none of them changes what the finished epochs computed.
# (--epochs / --max-steps extend or shorten the run: the cosine schedule stretches to the new length.)
RESUMABLE = ("epochs", "max_steps", "device", "workers", "overlays", "out")


def load_checkpoint(path: Path) -> dict:
    """The checkpoint dict at `path`; RunError in one line when it cannot be read."""
    from .evaluate import RunError

    try:
        state = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as error:  # a truncated or foreign file
        raise RunError(f"checkpoint {path} cannot be read: {type(error).__name__}: "
                       f"{(str(error).splitlines() or [''])[0]}") from None
    if not isinstance(state, dict) or "model" not in state or "config" not in state:
        raise RunError(f"{path} is not a pdcr-seg checkpoint")
    return state


def check_same_run(saved: dict, cfg: TrainConfig, out: Path) -> None:
    """ConfigError naming the first setting of `cfg` that differs from the run's own (`saved`, its
    checkpoint's config) and may not change on resume."""
    run = from_run(saved)
    run.data = absolute_data_spec(run.data)
    for key in run.to_dict():
        if key in RESUMABLE or getattr(run, key) == getattr(cfg, key):
            continue
        flag = "--" + key.replace("_", "-")
        may_change = ", ".join("--" + k.replace("_", "-") for k in RESUMABLE if k != "out")
        raise ConfigError(f"--resume: {flag} {_show(getattr(cfg, key))} differs from the run's "
                          f"{_show(getattr(run, key))} ({out / 'config.yaml'}); a resumed run keeps its settings "
                          f"(only {may_change} may change): start a new run for other settings")


def _show(value) -> str:
    if isinstance(value, list):
        return " ".join(":".join(v) if isinstance(v, list) else str(v) for v in value) or "(none)"
    return str(value)


# ---- random states ------------------------------------------------------------------------------

def numpy_generators(transform) -> dict[str, np.random.RandomState]:
    """Every numpy RandomState reachable from a (MONAI) transform, by attribute path."""
    found: dict[str, np.random.RandomState] = {}
    seen: set[int] = set()

    def walk(obj, path: str) -> None:
        if id(obj) in seen:
            return
        seen.add(id(obj))
        if isinstance(obj, np.random.RandomState):
            found[path] = obj
        elif isinstance(obj, (list, tuple)):
            for i, item in enumerate(obj):
                walk(item, f"{path}[{i}]")
        elif isinstance(obj, dict):
            for key, item in obj.items():
                walk(item, f"{path}[{key!r}]")
        elif type(obj).__module__.split(".")[0] in ("monai", "pdcr_seg") and hasattr(obj, "__dict__"):
            for name, item in vars(obj).items():
                walk(item, f"{path}.{name}")

    walk(transform, "transform")
    return found


def torch_generators(model: nn.Module) -> dict[str, torch.Generator]:
    """Every torch.Generator held as an attribute by a module of `model`, by module path."""
    return {f"{name}.{attr}" if name else attr: value
            for name, module in model.named_modules() for attr, value in vars(module).items()
            if isinstance(value, torch.Generator)}


def random_states(transform, model: nn.Module) -> dict:
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
        "numpy": np.random.get_state(),
        "python": random.getstate(),
        "transforms": {path: r.get_state() for path, r in numpy_generators(transform).items()},
        "model": {path: g.get_state() for path, g in torch_generators(model).items()},
    }


def restore_random_states(states: dict, transform, model: nn.Module) -> list[str]:
    """Sets every random state saved by `random_states`; returns notes on what did not match."""
    torch.set_rng_state(states["torch"])
    if states.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])
    np.random.set_state(states["numpy"])
    random.setstate(states["python"])
    notes = []
    for kind, current, saved in (("transforms", numpy_generators(transform), states.get("transforms", {})),
                                 ("model", torch_generators(model), states.get("model", {}))):
        for path, generator in current.items():
            if path in saved:
                generator.set_state(saved[path])
        if set(current) != set(saved):
            notes.append(f"the random states of the {kind} in the checkpoint do not match this version's "
                         f"({len(saved)} saved, {len(current)} now): the resumed run will not repeat an "
                         "uninterrupted one exactly")
    return notes


# ---- the whole state of a run -------------------------------------------------------------------

def state_of(run) -> dict:
    """What checkpoint_last.pt holds for `run` (a train.Run) at the end of an epoch."""
    return {
        "config": run.cfg.to_dict(),
        "model": run.module.state_dict(),
        "optimizer": run.optimizer.state_dict(),
        "scheduler": run.scheduler.state_dict(),
        "progress": run.progress.to_dict(),
        "rng": random_states(run.bundle.train.transform, run.module),
        "data": {"in_channels": run.bundle.in_channels, "num_classes": run.bundle.num_classes,
                 "class_names": list(run.bundle.class_names), "description": run.bundle.description},
        "complexity": run.complexity,
        # read by older code and by eval: the run's id and epoch at the top level too
        "run_id": run.progress.run_id,
        "epoch": run.progress.epoch,
    }


def restore(run, state: dict) -> list[str]:
    """Puts `run` (a freshly set-up train.Run) in the state of a checkpoint; returns notes."""
    from .evaluate import RunError
    from .train import Progress

    if "progress" not in state or "rng" not in state:
        raise RunError("this checkpoint was written by an older pdcr-seg and cannot be resumed; start a new run")
    run.module.load_state_dict(state["model"])
    run.optimizer.load_state_dict(state["optimizer"])
    run.scheduler.load_state_dict(state["scheduler"])
    run.scheduler.T_max = max(run.total_steps, 1)  # this invocation's --epochs / --max-steps
    run.progress = Progress(**state["progress"])
    return restore_random_states(state["rng"], run.bundle.train.transform, run.module)


__all__ = ["RESUMABLE", "load_checkpoint", "check_same_run", "numpy_generators", "torch_generators",
           "random_states", "restore_random_states", "state_of", "restore"]
