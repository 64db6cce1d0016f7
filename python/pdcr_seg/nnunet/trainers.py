"""nnU-Net v2 trainers with PDCR and UAFR: ``nnUNetv2_train D CONFIG FOLD -tr nnUNetTrainerPDCR``.

=====================================  ==========================================================
``nnUNetTrainerPDCR``                  nnU-Net's training + PDCR (eq. 12) on the paper's layers
``nnUNetTrainerUAFR``                  nnU-Net's network with UAFR on every encoder/decoder stage
``nnUNetTrainerPDCRUAFR``              both
``<one of them>_1epoch``, ``_5epochs``  nnU-Net's schedule cut to 1 / 5 epochs (as nnU-Net's own
                                       ``nnUNetTrainer_5epochs``): for trying a set-up, on a CPU
``<one of them>_tiny``                 1 epoch of 2 training and 1 validation iterations, no
                                       mirroring (nor test-time mirroring): a smoke test of the
                                       pipeline (the tests use it), not a model
=====================================  ==========================================================

Everything else is nnU-Net's: its plans, network (``PlainConvUNet`` or the residual-encoder UNets
the plans name, for ``2d``, ``3d_fullres``, ``3d_lowres``), data augmentation, deep-supervision
loss (Dice + cross-entropy), SGD with the poly schedule, DDP (``-num_gpus``), checkpoints and
validation. The layers are those of ``layers.py``.

**PDCR** (``pdcr_ext.attach`` with the library's ``PDCRLoss`` defaults) regularises the features
of the training forward against the full-resolution target of deep supervision (``target[0]``);
nnU-Net's ``ignore_label`` (dataset.json) is its ``ignore_index``. The training loss is

    nnU-Net's loss (deep-supervised Dice + CE)  +  PDCRLoss(features, target[0])

Its cross-layer projections are parameters of the PDCR loss, not of the network: they train (an
extra parameter group of nnU-Net's SGD, clipped to the same norm 12 as the network, their
gradients averaged over the DDP processes after backward since nnU-Net's DDP wraps only the
network; DDP runs on CUDA only in nnU-Net and has not been run here) but are not in ``network_weights``, the state dict ``nnUNetv2_predict`` loads; they are
stored beside it (``checkpoint["pdcr"]``) so that ``--c`` continues them. Validation and the
validation loss are nnU-Net's own. torch.compile (nnU-Net's default on CUDA) is switched off for
the PDCR trainers (their feature hooks are not written for it) and kept for ``nnUNetTrainerUAFR``
(a compiled UAFR network gave the eager output with no graph break on the CPU; not run on CUDA).

**UAFR** is part of the network: ``build_network_architecture`` (also what ``nnUNetv2_predict``
calls to rebuild a trained model) attaches it, so its weights are in ``network_weights``.

**Logged** per epoch in nnU-Net's training log, its ``progress.png`` (an added panel beside its
losses) and its checkpoint: ``pdcr_losses`` (the weighted PDCR term, mean over the epoch's
iterations) and ``pdcr_terms`` (each layer's and pair's value before the weight). nnU-Net's
``train_losses`` stays nnU-Net's own loss, comparable with ``val_losses``; the optimised total is
``train_losses + pdcr_losses``.

Region-based training (``regions_class_order`` in dataset.json) has no class labels for PDCR and
is refused by the PDCR trainers (UAFR works with it).
"""

from __future__ import annotations

import os
from typing import List

import numpy as np
import torch
from torch import distributed as dist
from torch import nn

from . import INSTALL_HINT

try:
    from nnunetv2.training.logging.nnunet_logger import LocalLogger
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
    from nnunetv2.utilities.collate_outputs import collate_outputs
    from nnunetv2.utilities.helpers import dummy_context
except ModuleNotFoundError as error:
    if error.name and error.name.split(".")[0] == "nnunetv2":
        raise ModuleNotFoundError(f"nnU-Net v2 is not installed: {INSTALL_HINT}", name="nnunetv2") from None
    raise

import pdcr_ext

from .layers import nnunet_layers

__all__ = [
    "nnUNetTrainerPDCR", "nnUNetTrainerUAFR", "nnUNetTrainerPDCRUAFR",
    "nnUNetTrainerPDCR_1epoch", "nnUNetTrainerUAFR_1epoch", "nnUNetTrainerPDCRUAFR_1epoch",
    "nnUNetTrainerPDCR_5epochs", "nnUNetTrainerUAFR_5epochs", "nnUNetTrainerPDCRUAFR_5epochs",
    "nnUNetTrainerPDCR_tiny", "nnUNetTrainerUAFR_tiny", "nnUNetTrainerPDCRUAFR_tiny",
]

GRAD_CLIP = 12.0  # nnU-Net's clip_grad_norm_ of the network (nnUNetTrainer.train_step)


def unwrap(network: nn.Module) -> nn.Module:
    """The nn.Module under nnU-Net's DDP and torch.compile wrappers."""
    if isinstance(network, nn.parallel.DistributedDataParallel):
        network = network.module
    return getattr(network, "_orig_mod", network)


def smallest_input(configuration_manager, num_input_channels: int) -> torch.Tensor:
    """Zeros (1, C, *S): twice the network's total stride on each axis (every stage gets >= 2
    voxels), the cheapest input of attach's dry run."""
    strides = np.prod(np.array(configuration_manager.pool_op_kernel_sizes), axis=0)
    return torch.zeros(1, num_input_channels, *(2 * int(s) for s in strides))


class _NetworkView(nn.Module):
    """The network's submodules under their own names, without the network as a child: what
    pdcr_ext.attach extends with PDCR (``view.pdcr_plugin``) while the network's state dict stays
    nnU-Net's (plus UAFR)."""

    def __init__(self, network: nn.Module):
        super().__init__()
        for name, child in network.named_children():
            if name != "pdcr_plugin":  # attach's container (of UAFR): one per model
                self.add_module(name, child)
        self.__dict__["network"] = network  # not registered: no second copy of its parameters

    def forward(self, x):
        return self.network(x)


class PDCRLogger(LocalLogger):
    """nnU-Net's LocalLogger with the PDCR term and each layer's value, and a progress.png panel."""

    def __init__(self, verbose: bool = False):
        super().__init__(verbose)
        self.my_fantastic_logging["pdcr_losses"] = []
        self.my_fantastic_logging["pdcr_terms"] = []

    def load_checkpoint(self, checkpoint: dict):
        checkpoint.setdefault("pdcr_losses", [])
        checkpoint.setdefault("pdcr_terms", [])
        super().load_checkpoint(checkpoint)

    def plot_progress_png(self, output_folder):
        """nnU-Net's three panels (losses and pseudo Dice, epoch time, learning rate), then a fourth:
        the weighted PDCR term of the loss and each layer's term before the weight (log scale)."""
        import matplotlib.pyplot as plt
        import seaborn as sns

        log = self.my_fantastic_logging
        epoch = min(len(v) for v in log.values()) - 1
        x = list(range(epoch + 1))
        sns.set(font_scale=2.5)
        fig, axes = plt.subplots(4, 1, figsize=(30, 72))
        ax, ax2 = axes[0], axes[0].twinx()
        ax.plot(x, log["train_losses"][:epoch + 1], color="b", ls="-", label="loss_tr (nnU-Net's)", linewidth=4)
        ax.plot(x, log["val_losses"][:epoch + 1], color="r", ls="-", label="loss_val", linewidth=4)
        ax2.plot(x, log["mean_fg_dice"][:epoch + 1], color="g", ls="dotted", label="pseudo dice", linewidth=3)
        ax2.plot(x, log["ema_fg_dice"][:epoch + 1], color="g", ls="-", label="pseudo dice (mov. avg.)", linewidth=4)
        ax.set_xlabel("epoch")
        ax.set_ylabel("loss")
        ax2.set_ylabel("pseudo dice")
        ax.legend(loc=(0, 1))
        ax2.legend(loc=(0.2, 1))
        ax = axes[1]
        ax.plot(x, [e - s for e, s in zip(log["epoch_end_timestamps"], log["epoch_start_timestamps"])][:epoch + 1],
                color="b", ls="-", label="epoch duration", linewidth=4)
        ax.set(ylim=[0, ax.get_ylim()[1]])
        ax.set_xlabel("epoch")
        ax.set_ylabel("time [s]")
        ax.legend(loc=(0, 1))
        ax = axes[2]
        ax.plot(x, log["lrs"][:epoch + 1], color="b", ls="-", label="learning rate", linewidth=4)
        ax.set_xlabel("epoch")
        ax.set_ylabel("learning rate")
        ax.legend(loc=(0, 1))
        ax, ax2 = axes[3], axes[3].twinx()
        ax.plot(x, log["pdcr_losses"][:epoch + 1], color="k", ls="-", label="PDCR term (weighted)",
                linewidth=4)
        names = list(log["pdcr_terms"][epoch]) if epoch >= 0 and log["pdcr_terms"] else []
        for i, name in enumerate(names):
            ax2.plot(x, [terms.get(name, np.nan) for terms in log["pdcr_terms"][:epoch + 1]],
                     color=plt.cm.viridis(i / max(len(names) - 1, 1)), ls="--", label=name, linewidth=3)
        if names:
            ax2.set_yscale("log")
        ax.set_xlabel("epoch")
        ax.set_ylabel("PDCR term")
        ax2.set_ylabel("layer term (before the weight)")
        ax.legend(loc=(0, 1))
        ax2.legend(loc=(0.4, 1), fontsize="small", ncol=2)
        plt.tight_layout()
        fig.savefig(os.path.join(output_folder, "progress.png"))
        plt.close(fig)


class _PaperMethodsTrainer(nnUNetTrainer):
    """nnU-Net's trainer with PDCR and / or UAFR (class attributes ``pdcr`` and ``uafr``)."""

    pdcr = False
    uafr = False
    pdcr_options: dict = {}  # PDCRLoss keyword arguments over the library's defaults (weight, tau, ...)

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.pdcr_handle: pdcr_ext.PDCRHandle | None = None
        if self.pdcr:
            self.logger.local_logger = PDCRLogger(self.logger.local_logger.verbose)

    # -- the network: UAFR is part of it (also at prediction) ------------------------------------

    @classmethod
    def build_network_architecture(cls, plans_manager, configuration_manager, num_input_channels: int,
                                   num_output_channels: int, enable_deep_supervision: bool = True) -> nn.Module:
        network = super().build_network_architecture(plans_manager, configuration_manager, num_input_channels,
                                                     num_output_channels, enable_deep_supervision)
        if cls.uafr:
            pdcr_ext.attach(network, uafr_layers=nnunet_layers(network).uafr, num_classes=num_output_channels,
                            example_input=smallest_input(configuration_manager, num_input_channels))
        return network

    # -- PDCR: attached after nnU-Net's initialize (network, optimizer, DDP, loss) ---------------

    def initialize(self):
        super().initialize()
        if self.pdcr:
            self._attach_pdcr()

    def _attach_pdcr(self) -> None:
        if self.label_manager.has_regions:
            raise RuntimeError(f"{type(self).__name__}: PDCR needs class labels, this dataset trains regions "
                               f"(regions_class_order in dataset.json); use nnUNetTrainerUAFR")
        network = unwrap(self.network)
        layers = nnunet_layers(network)
        options = dict(samples=layers.samples, ignore_index=self.label_manager.ignore_label)
        options.update(self.pdcr_options)
        self.pdcr_handle = pdcr_ext.attach(
            _NetworkView(network), pdcr_layers=layers.pdcr, cross_layers=layers.cross,
            num_classes=self.label_manager.num_segmentation_heads,
            example_input=smallest_input(self.configuration_manager, self.num_input_channels).to(self.device),
            **options)
        pdcr = self.pdcr_handle.pdcr
        parameters = list(pdcr.parameters())
        if parameters:
            self.optimizer.add_param_group({"params": parameters})  # the poly schedule sets every group's lr
        self.print_to_log_file(f"PDCR on {', '.join(layers.pdcr)}; cross-layer {layers.cross}; "
                               f"N {layers.samples}; weight {pdcr.weight}, tau {pdcr.tau}; "
                               f"{sum(p.numel() for p in parameters)} projection parameters")

    def _do_i_compile(self):
        return False if self.pdcr else super()._do_i_compile()

    def full_resolution_target(self, target) -> torch.Tensor:
        """The label map PDCR compares with: deep supervision's first (full-resolution) target."""
        labels = target[0] if isinstance(target, (list, tuple)) else target
        return labels.long()

    def compute_loss(self, output, target) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(total, nnU-Net's loss, the weighted PDCR term) of the last forward's output."""
        segmentation = self.loss(output, target)
        pdcr = self.pdcr_handle.loss(self.full_resolution_target(target))
        return segmentation + pdcr, segmentation, pdcr

    def train_step(self, batch: dict) -> dict:
        """nnU-Net's train_step with the PDCR term added to the loss (and its projections stepped)."""
        if not self.pdcr:
            return super().train_step(batch)
        data = batch["data"].to(self.device, non_blocking=True)
        target = batch["target"]
        target = ([t.to(self.device, non_blocking=True) for t in target] if isinstance(target, list)
                  else target.to(self.device, non_blocking=True))
        self.optimizer.zero_grad(set_to_none=True)
        # autocast on CUDA only, as nnU-Net (slow on the CPU, unsupported on mps)
        with torch.autocast(self.device.type, enabled=True) if self.device.type == "cuda" else dummy_context():
            output = self.network(data)
            total, segmentation, pdcr = self.compute_loss(output, target)
        projections = list(self.pdcr_handle.pdcr.parameters())
        (total if self.grad_scaler is None else self.grad_scaler.scale(total)).backward()
        if self.is_ddp:  # DDP averaged the network's gradients; the projections are outside it
            _average_over_processes(projections)
        if self.grad_scaler is not None:
            self.grad_scaler.unscale_(self.optimizer)
        torch.nn.utils.clip_grad_norm_(self.network.parameters(), GRAD_CLIP)
        if projections:
            torch.nn.utils.clip_grad_norm_(projections, GRAD_CLIP)
        if self.grad_scaler is not None:
            self.grad_scaler.step(self.optimizer)
            self.grad_scaler.update()
        else:
            self.optimizer.step()
        out = {"loss": segmentation.detach().cpu().numpy(), "pdcr": float(pdcr.detach())}
        out.update({f"pdcr/{name}": float(value) for name, value in self.pdcr_handle.terms.items()})
        return out

    def on_train_epoch_end(self, train_outputs: List[dict]):
        super().on_train_epoch_end(train_outputs)
        if not self.pdcr:
            return
        outputs = collate_outputs(train_outputs)
        means = {key: float(np.mean(values)) for key, values in outputs.items() if key.startswith("pdcr")}
        if self.is_ddp:
            gathered = [None] * dist.get_world_size()
            dist.all_gather_object(gathered, means)
            means = {key: float(np.mean([g[key] for g in gathered])) for key in means}
        self.logger.log("pdcr_losses", means.pop("pdcr"), self.current_epoch)
        self.logger.log("pdcr_terms", {key[len("pdcr/"):]: value for key, value in means.items()}, self.current_epoch)

    def on_epoch_end(self):
        if self.pdcr:
            terms = self.logger.get_value("pdcr_terms", step=-1)
            self.print_to_log_file("pdcr_loss", np.round(self.logger.get_value("pdcr_losses", step=-1), decimals=4))
            self.print_to_log_file("pdcr_terms", {name: float(f"{value:.5g}") for name, value in terms.items()})
        super().on_epoch_end()

    # -- checkpoints: the projections beside nnU-Net's network_weights ---------------------------

    def save_checkpoint(self, filename: str) -> None:
        super().save_checkpoint(filename)
        if not self.pdcr or self.local_rank != 0 or self.disable_checkpointing or self.pdcr_handle is None:
            return
        checkpoint = torch.load(filename, map_location="cpu", weights_only=False)
        checkpoint["pdcr"] = {"state_dict": self.pdcr_handle.pdcr.state_dict(),
                              "layers": list(self.pdcr_handle.pdcr_layers)}
        partial = f"{filename}.partial"
        torch.save(checkpoint, partial)
        os.replace(partial, filename)  # never a half-written checkpoint

    def load_checkpoint(self, filename_or_checkpoint) -> None:
        super().load_checkpoint(filename_or_checkpoint)
        if not self.pdcr:
            return
        checkpoint = filename_or_checkpoint
        if isinstance(checkpoint, str):
            checkpoint = torch.load(checkpoint, map_location=self.device, weights_only=False)
        if "pdcr" in checkpoint:
            self.pdcr_handle.pdcr.load_state_dict(checkpoint["pdcr"]["state_dict"])
        else:
            self.print_to_log_file("WARNING: this checkpoint holds no PDCR projections (not written by a PDCR "
                                   "trainer?): they start from their initialisation")


def _average_over_processes(parameters) -> None:
    """Replaces each parameter's gradient by its mean over the DDP processes (what DDP does for
    the network's parameters during backward)."""
    for p in parameters:
        if p.grad is not None:
            dist.all_reduce(p.grad)
            p.grad /= dist.get_world_size()


class nnUNetTrainerPDCR(_PaperMethodsTrainer):
    """nnU-Net + PDCR on encoder stages 2-4, every decoder stage and the pair (2, 3)."""

    pdcr = True


class nnUNetTrainerUAFR(_PaperMethodsTrainer):
    """nnU-Net + UAFR on every encoder and decoder stage."""

    uafr = True


class nnUNetTrainerPDCRUAFR(_PaperMethodsTrainer):
    """nnU-Net + PDCR + UAFR (the paper's full method)."""

    pdcr = True
    uafr = True


def short_schedule(base: type, suffix: str, epochs: int, iterations: int | None = None,
           val_iterations: int | None = None, mirroring: bool = True) -> type:
    """`base` (any nnU-Net trainer class) on a shorter schedule, named `<base>_<suffix>`: `epochs`
    epochs of `iterations` training and `val_iterations` validation iterations (nnU-Net's 250 and
    50 when None). nnU-Net's commands find a class by name in modules they import: a class made
    here at run time is for Python use (benchmarks/nnunet_experiment.py); mirroring=False drops mirroring from the augmentation and from test-time
    augmentation, as nnU-Net's nnUNetTrainerNoMirroring (8 times fewer sliding-window passes in 3-D)."""

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        base.__init__(self, plans, configuration, fold, dataset_json, device)
        self.num_epochs = epochs
        if iterations is not None:
            self.num_iterations_per_epoch = iterations
        if val_iterations is not None:
            self.num_val_iterations_per_epoch = val_iterations

    def configure_rotation_dummyDA_mirroring_and_inital_patch_size(self):
        rotation, dummy_2d, initial_patch_size, _ = base.configure_rotation_dummyDA_mirroring_and_inital_patch_size(self)
        self.inference_allowed_mirroring_axes = None
        return rotation, dummy_2d, initial_patch_size, None

    name = f"{base.__name__}_{suffix}"
    schedule = f"{epochs} epoch(s)" + (f" of {iterations} training and {val_iterations} validation iterations"
                                       if iterations else "") + ("" if mirroring else ", no mirroring")
    members = {"__init__": __init__, "__module__": __name__, "__qualname__": name,
               "__doc__": f"{base.__name__} for {schedule}."}
    if not mirroring:
        members["configure_rotation_dummyDA_mirroring_and_inital_patch_size"] = \
            configure_rotation_dummyDA_mirroring_and_inital_patch_size
    return type(name, (base,), members)


nnUNetTrainerPDCR_1epoch = short_schedule(nnUNetTrainerPDCR, "1epoch", 1)
nnUNetTrainerUAFR_1epoch = short_schedule(nnUNetTrainerUAFR, "1epoch", 1)
nnUNetTrainerPDCRUAFR_1epoch = short_schedule(nnUNetTrainerPDCRUAFR, "1epoch", 1)
nnUNetTrainerPDCR_5epochs = short_schedule(nnUNetTrainerPDCR, "5epochs", 5)
nnUNetTrainerUAFR_5epochs = short_schedule(nnUNetTrainerUAFR, "5epochs", 5)
nnUNetTrainerPDCRUAFR_5epochs = short_schedule(nnUNetTrainerPDCRUAFR, "5epochs", 5)
nnUNetTrainerPDCR_tiny = short_schedule(nnUNetTrainerPDCR, "tiny", 1, 2, 1, mirroring=False)
nnUNetTrainerUAFR_tiny = short_schedule(nnUNetTrainerUAFR, "tiny", 1, 2, 1, mirroring=False)
nnUNetTrainerPDCRUAFR_tiny = short_schedule(nnUNetTrainerPDCRUAFR, "tiny", 1, 2, 1, mirroring=False)
