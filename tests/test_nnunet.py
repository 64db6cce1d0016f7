"""PDCR and UAFR inside nnU-Net v2 (python/pdcr_seg/nnunet): layers, trainers, install, convert, and
the whole pipeline as a user runs it (convert -> nnUNetv2_plan_and_preprocess -> nnUNetv2_train ->
nnUNetv2_predict -> nnU-Net's evaluation).

nnU-Net is installed by `make` (requirements-nnunet.txt): without it these tests fail, they do not
skip. nnU-Net's folders (nnUNet_raw / _preprocessed / _results) are temporary folders; its trainer
folder is a temporary copy of the installed nnunetv2 (put first on PYTHONPATH of the commands), so
`pdcr-seg nnunet install` never writes into the environment's nnunetv2.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
DATASET_ID = 501
BIN = Path(sys.executable).parent  # nnU-Net's commands beside this Python (the venv's bin)


def require_nnunet():
    if importlib.util.find_spec("nnunetv2") is None:
        pytest.fail("nnunetv2 is not installed: `make` installs it (pip install --no-deps -r "
                    "requirements-nnunet.txt)", pytrace=False)


def nnunet_env(root: Path, **extra) -> dict:
    env = dict(os.environ)
    env.update(nnUNet_raw=str(root / "raw"), nnUNet_preprocessed=str(root / "preprocessed"),
               nnUNet_results=str(root / "results"), nnUNet_def_n_proc="1")
    env.update({k: str(v) for k, v in extra.items()})
    return env


def run(command: list[str], env: dict, timeout: int = 600) -> tuple[str, float]:
    """Runs a command; its output on failure; (output, seconds)."""
    start = time.perf_counter()
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=timeout)
    seconds = time.perf_counter() - start
    output = done.stdout + done.stderr
    assert done.returncode == 0, f"{' '.join(command)} exited {done.returncode}:\n{output[-6000:]}"
    return output, seconds


def nnunet_copy(tmp_path: Path) -> tuple[Path, str]:
    """A copy of the installed nnunetv2 under tmp_path/site (so `pdcr-seg nnunet install` never
    writes into the environment's) and the PYTHONPATH that puts it, and this checkout, first."""
    import nnunetv2

    library = tmp_path / "site"
    shutil.copytree(Path(nnunetv2.__file__).parent, library / "nnunetv2", ignore=shutil.ignore_patterns("__pycache__"))
    return library, os.pathsep.join([str(library), str(ROOT), str(ROOT / "python")])


@pytest.fixture(scope="module")
def planned(tmp_path_factory):
    """Nuclei as nnUNet_raw/Dataset501_Nuclei3D, planned and preprocessed for 3d_fullres (nnU-Net's
    command); nnU-Net's folders set for this module's tests."""
    require_nnunet()
    from pdcr_seg.nnunet.convert import convert

    root = tmp_path_factory.mktemp("nnunet")
    env = nnunet_env(root)
    with pytest.MonkeyPatch.context() as patch:
        for key in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
            patch.setenv(key, env[key])
        folder = convert("nuclei", DATASET_ID)
        _, seconds = run([str(BIN / "nnUNetv2_plan_and_preprocess"), "-d", str(DATASET_ID), "-c", "3d_fullres",
                          "-np", "1", "-npfp", "1"], env)
        yield {"root": root, "env": env, "raw": folder, "seconds": {"plan_and_preprocess": seconds},
               "preprocessed": root / "preprocessed" / folder.name}


def make_trainer(planned, cls, configuration="3d_fullres", plans=None, dataset_json=None):
    from batchgenerators.utilities.file_and_folder_operations import load_json

    plans = dict(plans or load_json(str(planned["preprocessed"] / "nnUNetPlans.json")))
    plans["continue_training"] = False
    dataset_json = dataset_json or load_json(str(planned["preprocessed"] / "dataset.json"))
    return cls(plans, configuration, 0, dataset_json, torch.device("cpu"))


def make_batch(trainer, seed: int, ignore_label: int | None = None) -> dict:
    """A batch as nnU-Net's loader gives it: data (B, C, *patch), target = the deep-supervision list
    (full resolution first) of int16 label maps (B, 1, *), nearest-downsampled; blob-shaped labels."""
    g = torch.Generator().manual_seed(seed)
    patch = list(trainer.configuration_manager.patch_size)
    data = torch.randn(2, trainer.num_input_channels, *patch, generator=g)
    pool = F.avg_pool3d if len(patch) == 3 else F.avg_pool2d
    labels = (pool(torch.rand(2, 1, *patch, generator=g), 5, 1, 2) > 0.5).to(torch.int16)
    if ignore_label is not None:
        labels[..., :3] = ignore_label  # an unlabelled border
    target = [F.interpolate(labels.float(), size=[round(p * s) for p, s in zip(patch, scale)], mode="nearest")
              .to(torch.int16) for scale in trainer._get_deep_supervision_scales()]
    return {"data": data, "target": target}


# -- layers -------------------------------------------------------------------------------------


def _unets(dims: int):
    from dynamic_network_architectures.architectures.unet import (PlainConvUNet, ResidualEncoderUNet,
                                                                   ResidualUNet)

    conv, norm = (torch.nn.Conv2d, torch.nn.InstanceNorm2d) if dims == 2 else (torch.nn.Conv3d, torch.nn.InstanceNorm3d)
    common = dict(input_channels=1, n_stages=5, features_per_stage=[4, 8, 16, 16, 16], conv_op=conv,
                  kernel_sizes=3, strides=[1, 2, 2, 2, 2], num_classes=2, n_conv_per_stage_decoder=1,
                  conv_bias=True, norm_op=norm, norm_op_kwargs={"affine": True}, nonlin=torch.nn.LeakyReLU,
                  deep_supervision=True)
    return [PlainConvUNet(n_conv_per_stage=1, **common), ResidualEncoderUNet(n_blocks_per_stage=1, **common),
            ResidualUNet(n_blocks_per_stage=1, **common)]


@pytest.mark.parametrize("dims", [2, 3])
def test_paper_layers_on_nnunet_networks(dims, one_thread):
    require_nnunet()
    import pdcr_ext
    from pdcr_seg.nnunet.layers import nnunet_layers

    for network in _unets(dims):
        layers = nnunet_layers(network)
        assert layers.pdcr == ("encoder.stages.1", "encoder.stages.2", "encoder.stages.3", "decoder.stages.0",
                               "decoder.stages.1", "decoder.stages.2", "decoder.stages.3")
        assert layers.cross == (("encoder.stages.1", "encoder.stages.2"),)
        assert [layers.samples[n] for n in layers.pdcr] == [128, 64, 32, 8, 8, 8, 8]
        assert layers.uafr == tuple(f"encoder.stages.{i}" for i in range(5)) + tuple(f"decoder.stages.{i}" for i in range(4))
        x = torch.zeros(1, 1, *(32,) * dims)
        shapes = {info.name: info.shape for info in pdcr_ext.list_layers(network, x)}
        # encoder stage k at 1 / 2^(k-1) of the input, the decoder from deep to full resolution
        assert [shapes[f"encoder.stages.{i}"][2] for i in range(5)] == [32, 16, 8, 4, 2]
        assert [shapes[f"decoder.stages.{i}"][2] for i in range(4)] == [4, 8, 16, 32]
        handle = pdcr_ext.attach(network, layers.pdcr, layers.cross, layers.uafr, 2, example_input=x, samples=layers.samples)
        outputs = network(torch.randn(2, 1, *(32,) * dims))
        loss = F.cross_entropy(outputs[0], torch.zeros(2, *(32,) * dims, dtype=torch.long)) + handle.loss(
            torch.randint(0, 2, (2, 1, *(32,) * dims)))
        loss.backward()
        assert torch.isfinite(loss) and set(handle.terms) == set(layers.pdcr) | {"encoder.stages.1~encoder.stages.2"}


def test_a_network_without_stages_is_refused():
    require_nnunet()
    from pdcr_seg.nnunet.layers import nnunet_layers

    with pytest.raises(ValueError, match="encoder.stages"):
        nnunet_layers(torch.nn.Sequential(torch.nn.Conv3d(1, 2, 3)))


# -- trainers -----------------------------------------------------------------------------------


def _resenc_plans(plans: dict) -> dict:
    """The plans with nnU-Net's residual-encoder UNet (as its ResEnc planners write them)."""
    plans = json.loads(json.dumps(plans))
    for configuration in plans["configurations"].values():
        arch = configuration["architecture"]
        arch["network_class_name"] = "dynamic_network_architectures.architectures.unet.ResidualEncoderUNet"
        arch["arch_kwargs"]["n_blocks_per_stage"] = arch["arch_kwargs"].pop("n_conv_per_stage")
    return plans


@pytest.mark.parametrize("configuration", ["2d", "3d_fullres"])
@pytest.mark.parametrize("architecture", ["PlainConvUNet", "ResidualEncoderUNet"])
def test_network_for_prediction(planned, configuration, architecture):
    """build_network_architecture (what nnUNetv2_predict calls) gives the state dict training saves:
    UAFR in it for the UAFR trainers, PDCR's projections never."""
    from batchgenerators.utilities.file_and_folder_operations import load_json
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    from pdcr_seg.nnunet import trainers

    plans = load_json(str(planned["preprocessed"] / "nnUNetPlans.json"))
    if architecture != "PlainConvUNet":
        plans = _resenc_plans(plans)
    manager = PlansManager(plans)
    config = manager.get_configuration(configuration)

    def build(cls, deep_supervision):
        return cls.build_network_architecture(manager, config, 1, 2, deep_supervision)

    baseline = build(nnUNetTrainer, True)
    assert type(baseline).__name__ == architecture
    n_stages = len(baseline.encoder.stages) + len(baseline.decoder.stages)
    for cls in (trainers.nnUNetTrainerPDCR, trainers.nnUNetTrainerUAFR):
        training = build(cls, True)
        keys = set(training.state_dict())
        uafr = {k for k in keys if k.startswith("pdcr_plugin.uafr.")}
        assert keys - uafr == set(baseline.state_dict()) and not any("projection" in k for k in keys)
        assert len({k.split(".")[2] for k in uafr}) == (n_stages if cls.uafr else 0)
    build(trainers.nnUNetTrainerPDCRUAFR_tiny, False).load_state_dict(training.state_dict())  # strict, as nnU-Net's predictor


def test_loss_is_nnunet_loss_plus_pdcr(planned, one_thread):
    """One train_step of nnUNetTrainerPDCR: its loss is nnU-Net's loss plus PDCRLoss of the paper's
    layers against the full-resolution target, and its gradient that sum's gradient (nnU-Net clips
    to norm 12: same direction) -- checked against nnU-Net's own trainer on the same weights."""
    import pdcr_ext
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

    from pdcr_seg.nnunet import trainers
    from pdcr_seg.nnunet.layers import nnunet_layers

    torch.manual_seed(0)
    trainer = make_trainer(planned, trainers.nnUNetTrainerPDCR_tiny)
    trainer.initialize()
    reference = make_trainer(planned, nnUNetTrainer)
    reference.initialize()
    reference.network.load_state_dict(trainer.network.state_dict())
    batch = make_batch(trainer, seed=1)

    layers = nnunet_layers(reference.network)
    modules = dict(reference.network.named_modules())
    features = {}
    for name in layers.pdcr:
        modules[name].register_forward_hook(lambda m, i, o, name=name: features.__setitem__(name, o))
    with torch.no_grad():
        reference.network(batch["data"])
    pdcr = pdcr_ext.PDCRLoss(2, cross_layers=[(0, 1)], in_channels=[features[n].shape[1] for n in layers.pdcr],
                             layer_names=list(layers.pdcr), samples=layers.samples)
    pdcr.load_state_dict(trainer.pdcr_handle.pdcr.state_dict())
    segmentation = reference.loss(reference.network(batch["data"]), batch["target"])
    term = pdcr([features[n] for n in layers.pdcr], batch["target"][0].long())
    (segmentation + term).backward()

    out = trainer.train_step(batch)
    assert float(out["loss"]) == pytest.approx(float(segmentation.detach()), rel=1e-5)
    assert out["pdcr"] == pytest.approx(float(term.detach()), rel=1e-5)
    assert {k[len("pdcr/"):] for k in out if k.startswith("pdcr/")} == set(pdcr.terms)

    def direction(module):  # (the deepest output's head has deep-supervision weight 0: no gradient)
        g = torch.cat([torch.zeros(p.numel()) if p.grad is None else p.grad.flatten() for p in module.parameters()])
        return g / g.norm()

    assert torch.allclose(direction(trainer.network), direction(reference.network), atol=1e-5)
    assert torch.allclose(direction(trainer.pdcr_handle.pdcr), direction(pdcr), atol=1e-5)


@pytest.mark.parametrize("configuration", ["2d", "3d_fullres"])
def test_ignore_label_is_pdcr_ignore_index(planned, configuration, one_thread, monkeypatch):
    import nnunetv2.training.nnUNetTrainer.nnUNetTrainer as nnunet_trainer
    from batchgenerators.utilities.file_and_folder_operations import load_json
    from nnunetv2.training.dataloading.nnunet_dataset import nnUNetDatasetBlosc2

    from pdcr_seg.nnunet import trainers

    # only 3d_fullres was preprocessed; no data is read here
    monkeypatch.setattr(nnunet_trainer, "infer_dataset_class", lambda folder: nnUNetDatasetBlosc2)
    dataset_json = load_json(str(planned["preprocessed"] / "dataset.json"))
    dataset_json["labels"] = {"background": 0, "nucleus": 1, "ignore": 2}
    trainer = make_trainer(planned, trainers.nnUNetTrainerPDCRUAFR_tiny, configuration, dataset_json=dataset_json)
    trainer.initialize()
    assert trainer.pdcr_handle.pdcr.ignore_index == 2 and trainer.pdcr_handle.pdcr.num_classes == 2
    out = trainer.train_step(make_batch(trainer, seed=2, ignore_label=2))
    assert np.isfinite(out["loss"]) and np.isfinite(out["pdcr"])


def test_regions_are_refused_by_pdcr(planned):
    from batchgenerators.utilities.file_and_folder_operations import load_json

    from pdcr_seg.nnunet import trainers

    dataset_json = load_json(str(planned["preprocessed"] / "dataset.json"))
    dataset_json["labels"] = {"background": 0, "nucleus": [1, 2]}  # a region of two labels
    dataset_json["regions_class_order"] = [1]
    trainer = make_trainer(planned, trainers.nnUNetTrainerPDCR_tiny, dataset_json=dataset_json)
    with pytest.raises(RuntimeError, match="PDCR needs class labels"):
        trainer.initialize()


def test_continue_equals_uninterrupted(planned, tmp_path, one_thread):
    """nnU-Net's checkpoint, then --c (load_checkpoint): the next step equals the uninterrupted
    one -- network, UAFR, PDCR projections and their optimizer state all restored; the projections
    are beside network_weights, not in it."""
    from pdcr_seg.nnunet import trainers

    torch.manual_seed(0)
    uninterrupted = make_trainer(planned, trainers.nnUNetTrainerPDCRUAFR_tiny)
    uninterrupted.initialize()
    first, second = make_batch(uninterrupted, 3), make_batch(uninterrupted, 4)
    uninterrupted.train_step(first)
    path = str(tmp_path / "checkpoint_latest.pth")
    uninterrupted.save_checkpoint(path)
    checkpoint = torch.load(path, weights_only=False)
    assert "pdcr" in checkpoint and not any("projection" in k for k in checkpoint["network_weights"])
    assert any(k.startswith("pdcr_plugin.uafr.") for k in checkpoint["network_weights"])
    expected = {k: float(v) for k, v in uninterrupted.train_step(second).items()}

    torch.manual_seed(1)  # another initialisation, replaced by the checkpoint
    resumed = make_trainer(planned, trainers.nnUNetTrainerPDCRUAFR_tiny)
    resumed.load_checkpoint(path)
    got = {k: float(v) for k, v in resumed.train_step(second).items()}
    assert got == pytest.approx(expected, rel=1e-6)
    for a, b in [(uninterrupted.network, resumed.network), (uninterrupted.pdcr_handle.pdcr, resumed.pdcr_handle.pdcr)]:
        for (name, p), q in zip(a.state_dict().items(), b.state_dict().values()):
            assert torch.allclose(p, q, rtol=1e-6, atol=1e-7), name


# -- install / uninstall ------------------------------------------------------------------------


def test_install_and_uninstall_touch_only_their_file(tmp_path):
    require_nnunet()
    from pdcr_seg.nnunet import NnunetError
    from pdcr_seg.nnunet.install import MODULE, install, uninstall

    folder = tmp_path / "nnUNetTrainer"
    folder.mkdir()
    assert uninstall(folder) is None
    target = install(folder)
    assert target == folder / MODULE and "pdcr_seg.nnunet.trainers" in target.read_text()
    assert install(folder) == target  # again: updated in place
    assert uninstall(folder) == target and list(folder.iterdir()) == []
    (folder / MODULE).write_text("# someone else's\n")
    with pytest.raises(NnunetError, match="not written by pdcr-seg"):
        install(folder)
    with pytest.raises(NnunetError, match="not written by pdcr-seg"):
        uninstall(folder)
    assert (folder / MODULE).read_text() == "# someone else's\n"


def test_ext_trainer_folder_is_found_by_nnunet_search():
    """The nnUNet_extTrainer route: nnU-Net's own search of an external folder (what it runs when
    its trainer tree has no such class) finds the trainers in install.ext_dir()."""
    require_nnunet()
    from nnunetv2.utilities.find_class_by_name import recursive_find_python_class

    from pdcr_seg.nnunet import trainers
    from pdcr_seg.nnunet.install import ext_dir

    found = recursive_find_python_class(str(ext_dir()), "nnUNetTrainerPDCRUAFR_5epochs", None,
                                        base_folder=str(ext_dir()), cleanup_imports_from_base_folder=True)
    assert found is trainers.nnUNetTrainerPDCRUAFR_5epochs
    from nnunetv2.training.nnUNetTrainer.variants.training_length import nnUNetTrainer_Xepochs

    found = recursive_find_python_class(str(ext_dir()), "nnUNetTrainer_5epochs", None,
                                        base_folder=str(ext_dir()), cleanup_imports_from_base_folder=True)
    assert found is nnUNetTrainer_Xepochs.nnUNetTrainer_5epochs  # nnU-Net's own, re-exported


def test_missing_nnunet_is_one_line(monkeypatch, capsys):
    from pdcr_seg.cli import main

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "nnunetv2" else real(name, *a))
    assert main(["nnunet", "install"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "nnU-Net v2 is not installed" in err and "pip install" in err


# -- convert ------------------------------------------------------------------------------------


def test_nuclei_conversion(planned):
    import nibabel

    raw = planned["raw"]
    meta = json.loads((raw / "dataset.json").read_text())
    assert meta["labels"] == {"background": 0, "nucleus": 1} and meta["numTraining"] == 6
    assert meta["channel_names"] == {"0": "fluorescence"} and "straddle" in meta["description"]
    images = sorted((raw / "imagesTr").iterdir())
    assert [p.name for p in images][0] == "nuclei_r0c0_0000.nii.gz" and len(images) == 6
    total = 0
    for path in sorted((raw / "labelsTr").iterdir()):
        label = nibabel.load(str(path))
        assert label.header.get_zooms() == (1.0, 1.0, 1.0) and set(np.unique(label.get_fdata())) <= {0, 1}
        total += np.prod(label.shape)
    assert total == 31 * 61 * 57  # the blocks tile the volume
    assert not (raw / "splits_final.json").exists()  # blocks are not patients: nnU-Net's own folds


def _decathlon_folder(root: Path) -> Path:
    """Task09_Tiny: 4 two-channel 4-D volumes with a 0.8 x 0.7 x 2.5 mm voxel and labels 0..2."""
    import nibabel

    folder = root / "Task09_Tiny"
    (folder / "imagesTr").mkdir(parents=True)
    (folder / "labelsTr").mkdir()
    affine = np.diag([0.8, 0.7, 2.5, 1.0])
    rng = np.random.default_rng(0)
    for i in range(4):
        image = rng.normal(size=(12, 10, 6, 2)).astype(np.float32)
        label = rng.integers(0, 3, size=(12, 10, 6)).astype(np.uint8)
        nibabel.save(nibabel.Nifti1Image(image, affine), str(folder / "imagesTr" / f"tiny_{i:03d}.nii.gz"))
        nibabel.save(nibabel.Nifti1Image(label, affine), str(folder / "labelsTr" / f"tiny_{i:03d}.nii.gz"))
    (folder / "dataset.json").write_text(json.dumps({
        "name": "Tiny", "modality": {"0": "T1", "1": "T2"}, "labels": {"0": "background", "1": "edema", "2": "tumour"},
        "licence": "CC-BY-SA 4.0"}))
    return folder


def test_decathlon_folder_conversion(tmp_path, capsys):
    import nibabel

    from pdcr_seg.cli import main

    source = _decathlon_folder(tmp_path)
    assert main(["nnunet", "convert", "--data", f"folder:{source}", "--id", "9", "--raw", str(tmp_path / "raw")]) == 0
    out = tmp_path / "raw" / "Dataset009_Tiny"
    assert str(out) in capsys.readouterr().out
    meta = json.loads((out / "dataset.json").read_text())
    assert meta["channel_names"] == {"0": "T1", "1": "T2"} and meta["numTraining"] == 4
    assert meta["labels"] == {"background": 0, "edema": 1, "tumour": 2} and meta["licence"] == "CC-BY-SA 4.0"
    original = nibabel.load(str(source / "imagesTr" / "tiny_002.nii.gz"))
    for c in range(2):
        channel = nibabel.load(str(out / "imagesTr" / f"tiny_002_{c:04d}.nii.gz"))
        assert np.array_equal(channel.get_fdata(), original.get_fdata()[..., c])
        assert np.allclose(channel.affine, original.affine) and channel.header.get_zooms() == pytest.approx((0.8, 0.7, 2.5))
    assert (out / "labelsTr" / "tiny_002.nii.gz").read_bytes() == (source / "labelsTr" / "tiny_002.nii.gz").read_bytes()
    # the id is taken now: refused in one line, nothing written
    before = sorted(p.name for p in (tmp_path / "raw").iterdir())
    assert main(["nnunet", "convert", "--data", f"folder:{source}", "--id", "9", "--raw", str(tmp_path / "raw")]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "Dataset009_Tiny exists" in err
    assert sorted(p.name for p in (tmp_path / "raw").iterdir()) == before


@pytest.mark.parametrize("spec, match", [("folder:/nonexistent", "no such folder"), ("nothing", "--data must be"),
                                         ("lung-ct", "needs pdcr_seg.data.lung_ct")])
def test_convert_errors_are_one_line(spec, match, tmp_path, capsys, monkeypatch):
    from pdcr_seg.cli import main

    monkeypatch.setitem(sys.modules, "pdcr_seg.data.lung_ct", None)  # as before that loader exists
    assert main(["nnunet", "convert", "--data", spec, "--id", "7", "--raw", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and match in err
    assert list(tmp_path.iterdir()) == []


def test_lung_ct_conversion_folds_by_patient(tmp_path, monkeypatch):
    """Against the loader's interface: lung_ct_cases() -> [(patient, image HU (D, H, W) float32,
    mask (D, H, W) uint8, spacing (dz, dy, dx))]; a patient with two volumes stays in one fold."""
    import types

    import nibabel

    from pdcr_seg.nnunet.convert import convert

    rng = np.random.default_rng(0)
    cases = [(p, rng.normal(-500, 300, (5, 8, 9)).astype(np.float32), (rng.random((5, 8, 9)) > 0.8).astype(np.uint8),
              (3.0, 0.9, 0.8)) for p in ("pat_1", "pat_2", "pat_2", "pat_3")]
    monkeypatch.setitem(sys.modules, "pdcr_seg.data.lung_ct", types.SimpleNamespace(lung_ct_cases=lambda: cases))
    out = convert("lung-ct", 12, str(tmp_path))
    assert out.name == "Dataset012_LungCT"
    meta = json.loads((out / "dataset.json").read_text())
    assert meta["channel_names"] == {"0": "CT"} and "CC BY-NC" in meta["licence"] and meta["numTraining"] == 4
    splits = json.loads((out / "splits_final.json").read_text())
    assert splits == [{"train": ["pat_2", "pat_2_1", "pat_3"], "val": ["pat_1"]},
                      {"train": ["pat_1", "pat_3"], "val": ["pat_2", "pat_2_1"]},
                      {"train": ["pat_1", "pat_2", "pat_2_1"], "val": ["pat_3"]}]
    image = nibabel.load(str(out / "imagesTr" / "pat_2_1_0000.nii.gz"))
    assert image.header.get_zooms() == pytest.approx((0.8, 0.9, 3.0))  # (x, y, z) = (dx, dy, dz)
    assert np.allclose(np.asarray(image.dataobj).transpose(2, 1, 0), cases[2][1])
    label = nibabel.load(str(out / "labelsTr" / "pat_2_1.nii.gz"))
    assert np.array_equal(np.asarray(label.dataobj).transpose(2, 1, 0), cases[2][2])


# -- the whole pipeline -------------------------------------------------------------------------


@pytest.mark.slow
def test_end_to_end_as_a_user_runs_it(planned, tmp_path):
    """convert (fixture) -> nnUNetv2_plan_and_preprocess (fixture) -> pdcr-seg nnunet install ->
    nnUNetv2_train -tr nnUNetTrainerPDCRUAFR_tiny -device cpu -> nnUNetv2_predict -> nnU-Net's
    evaluation -> pdcr-seg nnunet uninstall; the installed module goes into a copy of nnunetv2."""
    import nibabel
    import nnunetv2
    from nnunetv2.evaluation.evaluate_predictions import compute_metrics_on_folder
    from nnunetv2.imageio.simpleitk_reader_writer import SimpleITKIO

    from pdcr_seg.nnunet.install import MODULE

    seconds = dict(planned["seconds"])
    library, pythonpath = nnunet_copy(tmp_path)
    env = nnunet_env(planned["root"], nnUNet_n_proc_DA=0,  # augmentation in the main process (2 cores)
                     nnUNet_results=tmp_path / "results",  # not the other tests' trainers' folders
                     PYTHONPATH=pythonpath)
    installed = library / "nnunetv2" / "training" / "nnUNetTrainer" / MODULE
    output, _ = run([sys.executable, "-m", "pdcr_seg", "nnunet", "install"], env)
    assert installed.is_file() and str(installed) in output
    assert not (Path(nnunetv2.__file__).parent / "training" / "nnUNetTrainer" / MODULE).exists()

    trainer = "nnUNetTrainerPDCRUAFR_tiny"
    output, seconds["train"] = run([str(BIN / "nnUNetv2_train"), str(DATASET_ID), "3d_fullres", "0", "-tr", trainer,
                                    "-device", "cpu"], env)
    fold = tmp_path / "results" / planned["raw"].name / f"{trainer}__nnUNetPlans__3d_fullres" / "fold_0"
    logs = list(fold.glob("training_log_*.txt"))
    assert len(logs) == 1
    log = logs[0].read_text()
    assert "PDCR on encoder.stages.1" in log and "pdcr_loss" in log and "pdcr_terms" in log
    assert (fold / "progress.png").is_file() and (fold / "validation" / "summary.json").is_file()
    checkpoint = torch.load(fold / "checkpoint_final.pth", weights_only=False)
    assert checkpoint["trainer_name"] == trainer and "pdcr" in checkpoint
    assert checkpoint["logging"]["pdcr_losses"] and set(checkpoint["logging"]["pdcr_terms"][0]) >= {"encoder.stages.1"}

    # nnUNetv2_predict rebuilds the network (UAFR included) from the trainer's name; on a
    # validation case it reproduces nnU-Net's own validation prediction exactly
    case = sorted(p.name[:-len(".nii.gz")] for p in (fold / "validation").glob("*.nii.gz"))[0]
    images = tmp_path / "images"
    images.mkdir()
    shutil.copy(planned["raw"] / "imagesTr" / f"{case}_0000.nii.gz", images)
    predictions = tmp_path / "predictions"
    output, seconds["predict"] = run([str(BIN / "nnUNetv2_predict"), "-i", str(images), "-o", str(predictions),
                                      "-d", str(DATASET_ID), "-c", "3d_fullres", "-f", "0", "-tr", trainer,
                                      "-device", "cpu", "-npp", "1", "-nps", "1"], env)
    predicted = nibabel.load(str(predictions / f"{case}.nii.gz"))
    source = nibabel.load(str(images / f"{case}_0000.nii.gz"))
    assert predicted.shape == source.shape and np.allclose(predicted.affine, source.affine)
    assert np.array_equal(np.asarray(predicted.dataobj), np.asarray(nibabel.load(str(fold / "validation" / f"{case}.nii.gz")).dataobj))

    start = time.perf_counter()
    reference = tmp_path / "reference"
    reference.mkdir()
    shutil.copy(planned["raw"] / "labelsTr" / f"{case}.nii.gz", reference)
    metrics = compute_metrics_on_folder(str(reference), str(predictions), str(tmp_path / "summary.json"), SimpleITKIO(),
                                        ".nii.gz", [1], None, num_processes=1)
    seconds["evaluate"] = time.perf_counter() - start
    dice = metrics["foreground_mean"]["Dice"]
    assert 0.0 <= dice <= 1.0 and metrics["metric_per_case"][0]["metrics"][1]["n_ref"] > 0

    output, _ = run([sys.executable, "-m", "pdcr_seg", "nnunet", "uninstall"], env)
    assert not installed.exists() and str(installed) in output
    print(f"nnU-Net end to end, seconds: {seconds}; Dice of the {case} prediction {dice:.3f}")


def test_a_png_dataset_made_by_hand_trains_and_predicts_in_2d(tmp_path):
    """A dataset made without our converter, as nnU-Net's documentation makes one: 2-D PNG images
    and label maps in nnUNet_raw, dataset.json from nnU-Net's generate_dataset_json -> plan and
    preprocess 2d -> pdcr-seg nnunet install -> nnUNetv2_train 2d -tr nnUNetTrainerPDCRUAFR_tiny
    -device cpu -> nnUNetv2_predict."""
    require_nnunet()
    from nnunetv2.dataset_conversion.generate_dataset_json import generate_dataset_json
    from PIL import Image

    from pdcr_seg.nnunet.install import MODULE

    dataset_id, name = 502, "Dataset502_Blobs"
    raw = tmp_path / "raw" / name
    (raw / "imagesTr").mkdir(parents=True)
    (raw / "labelsTr").mkdir()
    g = torch.Generator().manual_seed(3)
    for i in range(6):  # nnU-Net's 5-fold split needs 5 cases or more
        labels = (F.avg_pool2d(torch.rand(1, 1, 96, 80, generator=g), 9, 1, 4) > 0.52)[0, 0]
        image = (labels.float() * 120 + 60 + 30 * torch.randn(96, 80, generator=g)).clamp(0, 255)
        Image.fromarray(image.to(torch.uint8).numpy()).save(raw / "imagesTr" / f"blobs_{i:03d}_0000.png")
        Image.fromarray(labels.to(torch.uint8).numpy()).save(raw / "labelsTr" / f"blobs_{i:03d}.png")
    generate_dataset_json(str(raw), {0: "microscopy"}, {"background": 0, "blob": 1}, 6, ".png", dataset_name=name)

    library, pythonpath = nnunet_copy(tmp_path)
    env = nnunet_env(tmp_path, PYTHONPATH=pythonpath)
    run([str(BIN / "nnUNetv2_plan_and_preprocess"), "-d", str(dataset_id), "-c", "2d", "-np", "1", "-npfp", "1"], env)
    env["nnUNet_n_proc_DA"] = "0"  # augmentation in the main process (2 cores); planning needs it unset
    run([sys.executable, "-m", "pdcr_seg", "nnunet", "install"], env)
    assert (library / "nnunetv2" / "training" / "nnUNetTrainer" / MODULE).is_file()

    trainer = "nnUNetTrainerPDCRUAFR_tiny"
    run([str(BIN / "nnUNetv2_train"), str(dataset_id), "2d", "0", "-tr", trainer, "-device", "cpu"], env)
    fold = tmp_path / "results" / name / f"{trainer}__nnUNetPlans__2d" / "fold_0"
    log = next(fold.glob("training_log_*.txt")).read_text()
    assert "PDCR on encoder.stages.1" in log and "pdcr_loss" in log
    assert (fold / "checkpoint_final.pth").is_file() and (fold / "validation" / "summary.json").is_file()

    images, predictions = tmp_path / "images", tmp_path / "predictions"
    images.mkdir()
    shutil.copy(raw / "imagesTr" / "blobs_005_0000.png", images)
    run([str(BIN / "nnUNetv2_predict"), "-i", str(images), "-o", str(predictions), "-d", str(dataset_id), "-c", "2d",
         "-f", "0", "-tr", trainer, "-device", "cpu", "-npp", "1", "-nps", "1"], env)
    predicted = np.asarray(Image.open(predictions / "blobs_005.png"))
    assert predicted.shape == (96, 80) and set(np.unique(predicted)) <= {0, 1}
