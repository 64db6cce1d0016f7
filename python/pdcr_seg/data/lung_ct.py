"""A real lesion data set: lung tumours in chest CT, the Radiomics Digital Phantom shipped with pycerr.

**Licence: CC BY-NC 3.0 (non-commercial use only).** The phantom was contributed by Philippe
Lambin and published by CancerData (doi:10.17195/candat.2016.08.1); cite Lambin et al., Nature
Reviews Clinical Oncology 14(12):749, 2017 (``README_LICENSE.txt`` beside the data).

pycerr 2.5.1 ships ``cerr/datasets/radiomics_phantom_dicom/pat_1`` ... ``pat_4``: per patient a
DICOM CT series cropped around a non-small-cell lung tumour (axial, 0.977 mm pixels, 3 mm slices)
and an RTSTRUCT whose "GTV-1" contour is the tumour. pycerr is installed without its dependencies
and never imported (importlib finds its files); pydicom reads them.

Reading (``lung_ct_cases``): each CT slice in Hounsfield units (stored value x RescaleSlope +
RescaleIntercept), slices sorted by their position along the slice normal; each GTV-1 contour
(patient millimetres) goes to the voxel grid through the slice's ImagePositionPatient,
ImageOrientationPatient and PixelSpacing, onto the slice at its position (within 0.1 mm), and is
filled with ``skimage.draw.polygon`` (pixels whose centres lie inside; several contours on one
slice combine even-odd, so an inner contour is a hole). 68 slices contain tumour (26, 7, 12, 23).
Nothing is resampled: volumes keep their 3 x 0.977 x 0.977 mm grid.

Intensities: clipped to the window ``WINDOW_HU`` = -1000..300 HU, then z-normalised by the mean
and standard deviation of the windowed voxels of the training patients only (nnU-Net's CT
normalisation uses training statistics likewise). Why this window and not a mediastinal one
(W 400, L 40: -160..240 HU): the tumours are part solid -- 58 % of pat_2's tumour voxels (its
median is -224 HU) and 10-17 % of pat_1's and pat_4's lie below -160 HU, where a mediastinal
window would flatten them into the aerated lung. Above -160 HU nothing is lost: a network reads
floats, so a window is a clipping range, not a loss of contrast inside it; solid tumour (medians
11-41 HU in pat_1, pat_3, pat_4), atelectasis and vessels (soft tissue, enhanced vessels up to
about 300 HU) stay apart. Above 300 HU is bone and dense contrast (44 of the 174 683 tumour
voxels, calcification or bone at the contour's edge), below -1000 HU nothing.

Split by patient, never by slice: leave-one-patient-out folds. Fold K (0-3) tests on patient
``PATIENTS[K]``, validates on the next one (``PATIENTS[(K + 1) % 4]``) and trains on the other
two. (Four patients leave two for training: the numbers of one fold are one patient's; report all
four folds.)

* ``--dims 2``: every axial slice of the training patients trains (with and without tumour);
  every slice of the validation / test patient is evaluated (per slice; Dice and HD95 count the
  slices with tumour, MONAI's convention, and accuracy all of them). A slice is cut or padded
  (with air, -1000 HU, labelled background) about its centre to ``image_size`` x
  ``image_size`` pixels at its own spacing; the default 128 px (125 mm) keeps every tumour pixel
  (the crops are centred on the tumours), and a size that would cut one off is refused.
* ``--dims 3``: whole volumes; the training volumes give random patches (``--patch-size``), the
  validation and test volumes are segmented by sliding windows (volumes.py, evaluate.py).
"""

from __future__ import annotations

import functools
import importlib.util
from pathlib import Path
from typing import NamedTuple

import numpy as np

from . import DataError, DataUnavailable, RawSplits

PATIENTS = ("pat_1", "pat_2", "pat_3", "pat_4")
ROI_NAME = "GTV-1"
WINDOW_HU = (-1000.0, 300.0)  # module docstring: why
AIR_HU = -1000.0
LICENCE = "CC BY-NC 3.0, non-commercial use only"
_INSTALL = "install its data with: pip install --no-deps pycerr==2.5.1"


class LungCase(NamedTuple):
    """One patient: ``image_hu`` float32 (D, H, W), ``mask`` uint8 (D, H, W) (1 = GTV-1),
    ``spacing_mm`` (dz, dy, dx)."""

    patient_id: str
    image_hu: np.ndarray
    mask: np.ndarray
    spacing_mm: tuple[float, float, float]


def data_dir() -> Path:
    """pycerr's ``datasets/radiomics_phantom_dicom`` folder, found without importing pycerr."""
    try:
        spec = importlib.util.find_spec("cerr")
    except (ImportError, ValueError):
        spec = None
    if spec is None or not spec.submodule_search_locations:
        raise DataUnavailable(f"lung-ct: the pycerr package (module cerr) is not installed; {_INSTALL}")
    for location in spec.submodule_search_locations:
        folder = Path(location) / "datasets" / "radiomics_phantom_dicom"
        if all((folder / patient).is_dir() for patient in PATIENTS):
            return folder
    raise DataUnavailable(f"lung-ct: pycerr has no datasets/radiomics_phantom_dicom/pat_1..pat_4; {_INSTALL}")


def read_patient(folder: Path) -> LungCase:
    """One patient folder of DICOM files (a CT series and an RTSTRUCT) -> LungCase."""
    import pydicom
    from skimage.draw import polygon

    name = folder.name
    slices, structures = [], []
    for path in sorted(folder.glob("*.dcm")):
        try:
            ds = pydicom.dcmread(path)
        except Exception as error:  # a damaged install: name the file
            raise DataError(f"lung-ct: cannot read {path}: {error}") from None
        if ds.Modality == "CT":
            slices.append(ds)
        elif ds.Modality == "RTSTRUCT":
            structures.append(ds)
    if not slices or len(structures) != 1:
        raise DataError(f"lung-ct: {folder} must hold a CT series and one RTSTRUCT, "
                        f"found {len(slices)} CT files and {len(structures)} RTSTRUCTs")
    row_dir, col_dir = (np.asarray(slices[0].ImageOrientationPatient, float).reshape(2, 3))
    normal = np.cross(row_dir, col_dir)
    slices.sort(key=lambda ds: float(np.dot(ds.ImagePositionPatient, normal)))
    positions = np.array([np.dot(ds.ImagePositionPatient, normal) for ds in slices])
    steps = np.diff(positions)
    if len(slices) < 2 or np.ptp(steps) > 1e-3 or steps.min() <= 0:
        raise DataError(f"lung-ct: the slices of {name} are not evenly spaced: steps {sorted(set(steps.round(3)))} mm")
    # PixelSpacing is (distance between rows, distance between columns)
    dy, dx = (float(v) for v in slices[0].PixelSpacing)
    image = np.stack([ds.pixel_array.astype(np.float32) * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
                      for ds in slices]).astype(np.float32)

    rs = structures[0]
    numbers = [roi.ROINumber for roi in rs.StructureSetROISequence if roi.ROIName == ROI_NAME]
    contours = [c for c in rs.ROIContourSequence if numbers and c.ReferencedROINumber == numbers[0]]
    if not contours:
        raise DataError(f"lung-ct: the RTSTRUCT of {name} has no {ROI_NAME!r} contour")
    mask = np.zeros(image.shape, np.uint8)
    for contour in contours[0].ContourSequence:
        points = np.asarray(contour.ContourData, float).reshape(-1, 3)  # patient mm (x, y, z)
        k = int(np.argmin(np.abs(positions - np.dot(points[0], normal))))
        if abs(positions[k] - np.dot(points[0], normal)) > 0.1:
            raise DataError(f"lung-ct: a {ROI_NAME} contour of {name} lies on no CT slice "
                            f"(at {np.dot(points[0], normal):.2f} mm)")
        offset = points - np.asarray(slices[k].ImagePositionPatient, float)
        rows, cols = polygon(offset @ col_dir / dy, offset @ row_dir / dx, image.shape[1:])
        mask[k, rows, cols] ^= 1  # even-odd: an inner contour is a hole
    # positions are decimal strings: a mean step of 2.9999999999998 mm is 3 mm
    return LungCase(name, image, mask, (round(float(steps.mean()), 4), dy, dx))


@functools.lru_cache(maxsize=1)
def _read_all() -> tuple[LungCase, ...]:
    root = data_dir()
    cases = tuple(read_patient(root / patient) for patient in PATIENTS)
    for case in cases:  # the cache is shared: nobody may change it
        case.image_hu.flags.writeable = False
        case.mask.flags.writeable = False
    return cases


def lung_ct_cases() -> list[LungCase]:
    """Every patient of the phantom, in order pat_1..pat_4: ``(patient_id, image_hu float32
    (D, H, W), mask uint8 (D, H, W), spacing_mm (dz, dy, dx))``, raw Hounsfield units (no window,
    no normalisation), axial slices from the lowest position up. Copies: yours to change.
    Licence of the data: CC BY-NC 3.0 (non-commercial)."""
    return [LungCase(c.patient_id, c.image_hu.copy(), c.mask.copy(), c.spacing_mm) for c in _read_all()]


def fold_patients(fold: int) -> dict[str, tuple[str, ...]]:
    """Leave-one-patient-out: ``{"train": (two ids), "val": (the next id,), "test": (PATIENTS[fold],)}``."""
    if not isinstance(fold, (int, np.integer)) or not 0 <= fold < len(PATIENTS):
        raise DataError(f"lung-ct: --fold must be 0..{len(PATIENTS) - 1} (the test patient), got {fold!r}")
    test, val = PATIENTS[fold], PATIENTS[(fold + 1) % len(PATIENTS)]
    return {"train": tuple(p for p in PATIENTS if p not in (test, val)), "val": (val,), "test": (test,)}


def normalisation(cases, train_ids) -> tuple[float, float]:
    """(mean, sd) in HU of the windowed voxels of the training patients only."""
    voxels = np.concatenate([np.clip(c.image_hu, *WINDOW_HU).ravel() for c in cases if c.patient_id in train_ids])
    return float(voxels.mean()), float(voxels.std())


def _normalised(image_hu: np.ndarray, mean: float, sd: float) -> np.ndarray:
    return ((np.clip(image_hu, *WINDOW_HU) - mean) / sd).astype(np.float32)


def _centre(array: np.ndarray, size: int, fill) -> np.ndarray:
    """The last two axes cut or padded (with ``fill``) about their centre to ``size`` x ``size``."""
    out = array
    for axis in (-2, -1):
        n = out.shape[axis]
        start = (n - size) // 2  # negative: pad
        pad = [(0, 0)] * out.ndim
        pad[axis] = (max(0, -start), max(0, size - n + start))
        out = np.pad(out, pad, constant_values=fill)
        index = [slice(None)] * out.ndim
        index[axis] = slice(max(0, start), max(0, start) + size)
        out = out[tuple(index)]
    return out


def smallest_crop(cases) -> int:
    """The smallest ``image_size`` whose centred crop (``_centre``) keeps every tumour pixel."""
    needed = 1
    for case in cases:
        rows, cols = np.nonzero(case.mask.any(axis=0))
        for n, lo, hi in ((case.mask.shape[1], rows.min(), rows.max()), (case.mask.shape[2], cols.min(), cols.max())):
            size = needed
            while not ((n - size) // 2 <= lo and hi < (n - size) // 2 + size):
                size += 1
            needed = size
    return needed


def _splits(cases, fold: int):
    patients = fold_patients(fold)
    mean, sd = normalisation(cases, patients["train"])
    by_id = {c.patient_id: c for c in cases}
    return patients, mean, sd, by_id


def _describe(patients, mean, sd, what: str) -> str:
    return (f"lung-ct (Radiomics Digital Phantom from pycerr, {LICENCE}; {what}; fold: test "
            f"{patients['test'][0]}, val {patients['val'][0]}, train {' + '.join(patients['train'])}; "
            f"window {WINDOW_HU[0]:g}..{WINDOW_HU[1]:g} HU, z-normalised by the training patients' mean "
            f"{mean:.1f} and sd {sd:.1f} HU)")


def make_lung_ct(*, image_size: int = 128, seed: int = 0, num_classes: int | None = None,
                 fold: int = 0) -> RawSplits:
    """2-D: axial slices, ``image_size`` px about the centre at the CT's own spacing. Items
    ``{"image": (1, S, S) float32, "label": (1, S, S) int64, "name": "pat_1_slice017", "spacing": (dz, dy, dx)}``
    (the patient's voxel size in mm: evaluation stacks a patient's slices and scores the volume)."""
    del seed  # the slices are fixed; the seed drives augmentation (build_datasets)
    if num_classes not in (None, 2):
        raise DataError(f"lung-ct: the labels are binary (2 classes), got num_classes={num_classes}")
    cases = _read_all()
    patients, mean, sd, by_id = _splits(cases, fold)
    needed = smallest_crop(cases)
    if image_size < needed:
        raise DataError(f"lung-ct: --image-size {image_size} cuts tumour pixels off the centred slices; "
                        f"use --image-size {needed} or more")
    splits = {}
    for split, ids in patients.items():
        items = []
        for pid in ids:
            case = by_id[pid]
            image = _centre(_normalised(case.image_hu, mean, sd), image_size, _normalised(AIR_HU, mean, sd))
            label = _centre(case.mask, image_size, 0).astype(np.int64)
            items += [{"image": image[k][None].copy(), "label": label[k][None].copy(), "name": f"{pid}_slice{k:03d}",
                       "spacing": case.spacing_mm}  # (dz, dy, dx) mm: a patient's stacked slices get HD95 in mm
                      for k in range(len(image))]
        splits[split] = items
    return RawSplits(**splits, in_channels=1, num_classes=2, class_names=("background", "tumour"),
                     description=_describe(patients, mean, sd, "axial slices at 0.977 mm pixels"))


def make_lung_ct_volumes(*, patch_size, seed: int = 0, samples_per_epoch: int = 32,
                         num_classes: int | None = None, fold: int = 0) -> RawSplits:
    """3-D: one item per patient ``{"image": (1, D, H, W) float32, "label": (1, D, H, W) int64,
    "name": "pat_1"}``; the training volumes are listed ``samples_per_epoch / 2`` times (random
    patches an epoch)."""
    del seed
    if num_classes not in (None, 2):
        raise DataError(f"lung-ct: the labels are binary (2 classes), got num_classes={num_classes}")
    cases = _read_all()
    patients, mean, sd, by_id = _splits(cases, fold)
    splits = {split: [{"image": _normalised(by_id[pid].image_hu, mean, sd)[None],
                       "label": by_id[pid].mask.astype(np.int64)[None], "name": pid} for pid in ids]
              for split, ids in patients.items()}
    for item in splits["train"]:
        if any(p > s for p, s in zip(patch_size, item["image"].shape[1:])):
            raise DataError(f"lung-ct: --patch-size {tuple(patch_size)} is larger than {item['name']}'s volume "
                            f"{item['image'].shape[1:]}; give a smaller patch")
    spacing = " / ".join(sorted({"x".join(f"{v:.3g}" for v in c.spacing_mm) for c in cases}))
    return RawSplits(**splits, in_channels=1, num_classes=2, class_names=("background", "tumour"),
                     description=_describe(patients, mean, sd, f"volumes at {spacing} mm, not resampled"),
                     repeat=max(1, samples_per_epoch // len(splits["train"])))


__all__ = ["LICENCE", "PATIENTS", "WINDOW_HU", "LungCase", "data_dir", "fold_patients", "lung_ct_cases",
           "make_lung_ct", "make_lung_ct_volumes", "normalisation", "read_patient"]
