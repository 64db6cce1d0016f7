"""pdcr-seg on volumes (--dims 3): the nuclei volume, Decathlon NIfTI folders, 3-D models."""

import json

import numpy as np
import pytest

from pdcr_seg.cli import main
from pdcr_seg.data import DataError, build_datasets
from pdcr_seg.data.volumes import NUCLEI_ROWS

TINY_3D = ["--dims", "3", "--width", "4", "--patch-size", "16", "16", "16", "--batch-size", "2",
           "--samples-per-epoch", "4", "--overlays", "1", "--device", "cpu"]


pytestmark = pytest.mark.usefixtures("one_thread")


def test_nuclei_volume_split_by_region():
    bundle = build_datasets("nuclei", dims=3, patch_size=(16, 32, 32), samples_per_epoch=4, augment=False)
    assert (bundle.in_channels, bundle.num_classes) == (1, 2)
    assert len(bundle.train) == 4 and len(bundle.val) == 1 and len(bundle.test) == 1
    crop = bundle.train[0]
    assert crop["image"].shape == (1, 16, 32, 32) and crop["label"].shape == (1, 16, 32, 32)
    assert bundle.test[0]["image"].shape == (1, 31, 16, 57) and bundle.val[0]["image"].shape == (1, 31, 8, 57)
    rows = [range(*r) for r in NUCLEI_ROWS.values()]
    assert sum(len(r) for r in rows) == 61 and not set(rows[0]) & set(rows[2]) and not set(rows[1]) & set(rows[2])
    assert set(np.unique(bundle.test[0]["label"].numpy())) == {0, 1}
    assert "13 of 51 nuclei in more than one split" in bundle.description


def test_nuclei_volume_normalised_by_the_training_rows():
    from pdcr_seg.data.volumes import load_nuclei_volume, read_nuclei_volume

    raw, instances = read_nuclei_volume()
    image, _ = load_nuclei_volume()
    lo, hi = np.percentile(raw[:, 0:37].astype(np.float32), (1, 99.8))
    np.testing.assert_allclose(image, np.clip((raw.astype(np.float32) - lo) / (hi - lo), 0, 1), atol=1e-6)
    slabs = [(slice(None), slice(*rows)) for rows in NUCLEI_ROWS.values()]
    in_all_three = set.intersection(*(set(np.unique(instances[s]).tolist()) - {0} for s in slabs))
    assert len(in_all_three) == 10  # the docstring's count: the validation slab is one nucleus thick


def test_3d_cli_trains_evaluates_and_writes_its_files(tmp_path):
    out = tmp_path / "run"
    assert main(["train", "--data", "nuclei", "--model", "unet", *TINY_3D, "--pdcr", "--uafr", "--epochs", "2",
                 "--max-steps", "2", "--out", str(out)]) == 0
    for name in ("checkpoint_best.pt", "checkpoint_last.pt", "config.yaml", "summary.json", "progress.png"):
        assert (out / name).is_file(), name
    assert len(list((out / "overlays").glob("*.png"))) == 1
    summary = json.loads((out / "summary.json").read_text())
    assert summary["config"]["dims"] == 3 and summary["steps"] == 2 and summary["test"]["images"] == 1
    assert set(summary["epochs"][0]["train_terms"]) == {"enc2", "enc3", "enc4", "dec4", "dec3", "dec2", "dec1",
                                                          "enc2~enc3"}  # --pdcr: the paper's main setting
    assert summary["complexity"]["macs"] > 0
    assert main(["eval", "--checkpoint", str(out / "checkpoint_best.pt"), "--out", str(tmp_path / "eval"),
                 "--device", "cpu", "--overlays", "0"]) == 0
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert metrics["dice"] == pytest.approx(summary["test"]["dice"], nan_ok=True)


def test_dynunet_the_nnunet_backbone_through_the_cli(tmp_path):
    out = tmp_path / "dyn"
    assert main(["train", "--data", "nuclei", "--model", "monai.DynUNet", *TINY_3D, "--patch-size", "16", "32", "32",
                 "--pdcr", "--uafr", "--epochs", "1", "--max-steps", "2", "--out", str(out)]) == 0
    summary = json.loads((out / "summary.json").read_text())
    # nnU-Net's strides for 16 x 32 x 32: 1, 2, 2, (1, 2, 2): four stages, PDCR on stages 2-4 and on
    # the three decoder stages
    assert set(summary["epochs"][0]["train_terms"]) == {"downsamples.0", "downsamples.1", "bottleneck",
                                                          "upsamples.0", "upsamples.1", "upsamples.2",
                                                          "downsamples.0~downsamples.1"}


def _decathlon(root, n=4, modalities=2):
    import nibabel

    (root / "imagesTr").mkdir(parents=True)
    (root / "labelsTr").mkdir()
    rng = np.random.default_rng(0)
    for i in range(n):
        image = rng.normal(size=(20, 18, 16, modalities)).astype(np.float32)  # MSD: (x, y, z, modality)
        label = ((rng.random((20, 18, 16)) > 0.7) * rng.integers(1, 3, size=(20, 18, 16))).astype(np.uint8)
        nibabel.save(nibabel.Nifti1Image(image, np.eye(4)), str(root / "imagesTr" / f"case_{i:03d}.nii.gz"))
        nibabel.save(nibabel.Nifti1Image(label, np.eye(4)), str(root / "labelsTr" / f"case_{i:03d}.nii.gz"))
    return f"folder:{root}"


def test_decathlon_nifti_folder_loads_and_trains(tmp_path):
    spec = _decathlon(tmp_path / "Task99")
    bundle = build_datasets(spec, dims=3, patch_size=(16, 16, 16), samples_per_epoch=4)
    assert bundle.in_channels == 2 and bundle.num_classes == 3
    # NIfTI (x, y, z) = (20, 18, 16) becomes (C, z, y, x): depth first
    assert len(bundle.val) + len(bundle.test) == 2 and bundle.test[0]["image"].shape == (2, 16, 18, 20)
    assert bundle.train[0]["image"].shape == (2, 16, 16, 16)
    out = tmp_path / "run"
    assert main(["train", "--data", spec, "--model", "unet", *TINY_3D, "--uafr", "--max-steps", "1",
                 "--epochs", "1", "--out", str(out)]) == 0
    assert json.loads((out / "summary.json").read_text())["num_classes"] == 3


@pytest.mark.parametrize("args,match", [
    (["--data", "nuclei", "--model", "fcn"], "2-D model"),
    (["--data", "synthetic", "--model", "unet"], "3-D data must be"),
    (["--data", "nuclei", "--model", "unet", "--patch-size", "64", "64", "64"], "larger than the training region"),
])
def test_3d_bad_input(args, match, tmp_path, capsys):
    assert main(["train", *TINY_3D, *args, "--max-steps", "1", "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err
    assert match in err and "Traceback" not in err


def test_missing_labels_in_a_nifti_folder(tmp_path):
    spec = _decathlon(tmp_path / "T")
    (tmp_path / "T" / "labelsTr" / "case_001.nii.gz").unlink()
    with pytest.raises(DataError, match="have no label"):
        build_datasets(spec, dims=3, patch_size=(16, 16, 16))
