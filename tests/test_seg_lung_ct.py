"""--data lung-ct: the Radiomics Digital Phantom (pycerr) read from DICOM, split by patient.

The data are installed by `make test` (pycerr --no-deps): a missing install fails these tests.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from matplotlib.path import Path as Polygon

from pdcr_seg.cli import main
from pdcr_seg.data import DataError, DataUnavailable, build_datasets
from pdcr_seg.data import lung_ct
from pdcr_seg.data.lung_ct import PATIENTS, WINDOW_HU

pytestmark = pytest.mark.usefixtures("one_thread")

# what the phantom holds (the issue: "68 slices contain tumour")
SHAPES = {"pat_1": (60, 201, 204), "pat_2": (41, 138, 141), "pat_3": (46, 137, 136), "pat_4": (56, 172, 178)}
TUMOUR_SLICES = {"pat_1": 26, "pat_2": 7, "pat_3": 12, "pat_4": 23}


@pytest.fixture(scope="module")
def cases():
    return {c.patient_id: c for c in lung_ct.lung_ct_cases()}


def items(dataset):
    return [dataset[i] for i in range(len(dataset))]


def test_every_patient_is_read_in_hounsfield_units(cases):
    assert list(cases) == list(PATIENTS)
    for pid, case in cases.items():
        assert case.image_hu.dtype == np.float32 and case.mask.dtype == np.uint8
        assert case.image_hu.shape == case.mask.shape == SHAPES[pid]
        assert case.spacing_mm[0] == 3.0 and case.spacing_mm[1] == case.spacing_mm[2] == pytest.approx(0.977, abs=1e-3)
        assert case.image_hu.min() == -1000  # air, after RescaleIntercept -1000
        # lung parenchyma is the commonest dark tissue: the 5th percentile lies in aerated lung
        assert -1000 <= np.percentile(case.image_hu, 5) < -800
        assert set(np.unique(case.mask).tolist()) == {0, 1}
    slices = {pid: int(c.mask.any(axis=(1, 2)).sum()) for pid, c in cases.items()}
    assert slices == TUMOUR_SLICES and sum(slices.values()) == 68
    for case in cases.values():  # one tumour: its slices are consecutive
        tumour = np.nonzero(case.mask.any(axis=(1, 2)))[0]
        assert np.array_equal(tumour, np.arange(tumour[0], tumour[-1] + 1))
        # a solid tumour: most of its voxels are soft tissue, far denser than the lung around it
        assert np.median(case.image_hu[case.mask > 0]) > -300


@pytest.mark.parametrize("pid", ["pat_2", "pat_3"])
def test_contours_land_where_dicom_puts_them(cases, pid):
    """The mask against an independent point-in-polygon test of the pixel centres in patient mm."""
    import pydicom

    folder = lung_ct.data_dir() / pid
    files = [pydicom.dcmread(p) for p in sorted(folder.glob("*.dcm"))]
    ct = sorted((d for d in files if d.Modality == "CT"), key=lambda d: float(d.ImagePositionPatient[2]))
    rs = next(d for d in files if d.Modality == "RTSTRUCT")
    mask = cases[pid].mask
    for contour in rs.ROIContourSequence[0].ContourSequence:
        points = np.asarray(contour.ContourData, float).reshape(-1, 3)
        k = int(np.argmin([abs(float(d.ImagePositionPatient[2]) - points[0, 2]) for d in ct]))
        x0, y0, _ = (float(v) for v in ct[k].ImagePositionPatient)
        dy, dx = (float(v) for v in ct[k].PixelSpacing)
        rows, cols = np.mgrid[0:mask.shape[1], 0:mask.shape[2]]
        centres = np.stack([x0 + cols.ravel() * dx, y0 + rows.ravel() * dy], 1)  # axial: x along columns
        inside = Polygon(points[:, :2]).contains_points(centres).reshape(mask.shape[1:])
        assert inside.sum() > 0
        disagree = np.logical_xor(inside, mask[k] > 0).sum()
        assert disagree <= 2, (k, disagree, inside.sum())  # at most a centre exactly on the outline


def test_folds_split_by_patient():
    tested = []
    for fold in range(4):
        p = lung_ct.fold_patients(fold)
        assert p["test"] == (PATIENTS[fold],) and p["val"] == (PATIENTS[(fold + 1) % 4],)
        everyone = p["train"] + p["val"] + p["test"]
        assert sorted(everyone) == sorted(PATIENTS) and len(set(everyone)) == 4  # disjoint, all used
        tested += p["test"]
    assert sorted(tested) == sorted(PATIENTS)  # each patient tested once over the folds
    for bad in (-1, 4, 1.5):
        with pytest.raises(DataError, match="--fold must be 0..3"):
            lung_ct.fold_patients(bad)
    with pytest.raises(DataError, match="only lung-ct has folds"):
        build_datasets("synthetic", fold=1)


def test_2d_slices_of_each_patient_stay_in_its_split(cases):
    b = build_datasets("lung-ct", fold=2, augment=False)  # test pat_3, val pat_4, train pat_1 + pat_2
    assert (b.in_channels, b.num_classes, b.class_names) == (1, 2, ("background", "tumour"))
    assert "CC BY-NC 3.0" in b.description and "test pat_3" in b.description
    split_items = {name: items(getattr(b, name)) for name in ("train", "val", "test")}
    patients = {name: {i["name"].rsplit("_slice", 1)[0] for i in its} for name, its in split_items.items()}
    assert patients == {"train": {"pat_1", "pat_2"}, "val": {"pat_4"}, "test": {"pat_3"}}
    assert [len(split_items[s]) for s in ("train", "val", "test")] == [60 + 41, 56, 46]  # every slice
    with_tumour = sum(int(i["label"].any()) for i in split_items["test"])
    assert with_tumour == TUMOUR_SLICES["pat_3"]
    for item in split_items["train"][:3] + split_items["test"][:3]:  # what the training loop expects
        assert item["image"].shape == item["label"].shape == (1, 128, 128)
        assert item["image"].dtype.is_floating_point and not item["label"].dtype.is_floating_point
    # the centred 128 px crop keeps every tumour pixel of the test patient
    assert sum(int(i["label"].sum()) for i in split_items["test"]) == int(cases["pat_3"].mask.sum())


def test_crops_refuse_to_cut_tumour_and_pad_with_air():
    with pytest.raises(DataError, match=r"--image-size 96 cuts tumour pixels.*use --image-size 101"):
        build_datasets("lung-ct", image_size=96, augment=False)
    raw = lung_ct.make_lung_ct(image_size=256, fold=0)
    mean, sd = lung_ct.normalisation(lung_ct.lung_ct_cases(), ("pat_3", "pat_4"))
    corner = raw.test[0]["image"][0, 0, 0]  # pat_1 is 201 x 204: the crop's corner is padding
    assert corner == pytest.approx((-1000 - mean) / sd)


def test_window_and_normalisation_come_from_the_training_patients_only(cases, monkeypatch):
    clean = lung_ct.make_lung_ct(fold=0)  # train pat_3 + pat_4, val pat_2, test pat_1
    train = [c for c in cases.values() if c.patient_id in ("pat_3", "pat_4")]
    voxels = np.concatenate([np.clip(c.image_hu, *WINDOW_HU).ravel() for c in train])
    mean, sd = voxels.mean(), voxels.std()
    assert f"mean {mean:.1f} and sd {sd:.1f}" in clean.description
    item = clean.train[0]  # pat_3, slice 0: 137 x 136 padded about the centre to 128 x 128
    hu = lung_ct._centre(cases["pat_3"].image_hu[0], 128, -1000)
    np.testing.assert_allclose(item["image"][0], (np.clip(hu, *WINDOW_HU) - mean) / sd, rtol=1e-5, atol=1e-5)
    # brighten the validation and test patients: the training items must not move
    shifted = tuple(c._replace(image_hu=c.image_hu + (500.0 if c.patient_id in ("pat_1", "pat_2") else 0.0))
                    for c in lung_ct._read_all())
    monkeypatch.setattr(lung_ct, "_read_all", lambda: shifted)
    moved = lung_ct.make_lung_ct(fold=0)
    assert moved.description == clean.description
    for a, b in zip(clean.train, moved.train):
        assert np.array_equal(a["image"], b["image"])
    assert not np.array_equal(clean.test[30]["image"], moved.test[30]["image"])


def test_3d_volumes_and_patches():
    b = build_datasets("lung-ct", dims=3, fold=1, patch_size=(16, 32, 32), samples_per_epoch=4, augment=False)
    assert "test pat_2" in b.description and "not resampled" in b.description
    assert len(b.train) == 4  # 2 training volumes x 2 crops an epoch
    crop = b.train[0]
    assert crop["image"].shape == crop["label"].shape == (1, 16, 32, 32)
    assert b.test[0]["image"].shape == (1, *SHAPES["pat_2"]) and b.test[0]["name"] == "pat_2"
    assert b.val[0]["image"].shape == (1, *SHAPES["pat_3"])
    assert int(b.test[0]["label"].any(dim=(0, 2, 3)).sum()) == TUMOUR_SLICES["pat_2"]
    with pytest.raises(DataError, match="larger than pat_"):
        build_datasets("lung-ct", dims=3, patch_size=(48, 32, 32))  # pat_2 has 41 slices


def test_missing_pycerr_says_how_to_install(monkeypatch):
    monkeypatch.setattr(lung_ct.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(DataUnavailable, match="pip install --no-deps pycerr"):
        lung_ct.data_dir()


@pytest.mark.slow
def test_cli_trains_and_evaluates_lung_ct_in_2d(tmp_path):
    out = tmp_path / "run"
    assert main(["train", "--data", "lung-ct", "--fold", "1", "--model", "unet", "--width", "4", "--batch-size", "4",
                 "--epochs", "1", "--max-steps", "2", "--overlays", "1", "--device", "cpu", "--out", str(out)]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["config"]["fold"] == 1 and summary["steps"] == 2
    assert summary["test"]["images"] == SHAPES["pat_2"][0]  # every slice of the test patient
    assert "test pat_2" in summary["data"]
    assert main(["eval", "--checkpoint", str(out / "checkpoint_best.pt"), "--out", str(tmp_path / "eval"),
                 "--device", "cpu", "--overlays", "0"]) == 0
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert metrics["images"] == SHAPES["pat_2"][0] and "test pat_2" in metrics["data"]  # the run's fold


@pytest.mark.slow
def test_cli_trains_and_evaluates_lung_ct_in_3d(tmp_path):
    out = tmp_path / "run3d"
    assert main(["train", "--data", "lung-ct", "--dims", "3", "--fold", "1", "--model", "unet", "--width", "4",
                 "--patch-size", "16", "64", "64", "--batch-size", "2", "--samples-per-epoch", "4", "--epochs", "1",
                 "--max-steps", "2", "--overlays", "1", "--device", "cpu", "--out", str(out)]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["config"]["dims"] == 3 and summary["steps"] == 2 and summary["test"]["images"] == 1
    assert len(list((out / "overlays").glob("*pat_2*.png"))) == 1
