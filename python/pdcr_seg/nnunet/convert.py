"""Our data as nnU-Net v2 raw datasets: ``pdcr-seg nnunet convert --data SPEC --id N``.

Writes ``$nnUNet_raw/DatasetNNN_<Name>/`` in nnU-Net's raw format: ``imagesTr/<case>_0000.nii.gz``
(one file per channel), ``labelsTr/<case>.nii.gz`` (uint8, the same voxel grid), ``dataset.json``
(channel names, labels, numTraining, file ending, and what the data are: description, reference,
licence) and, where the cases belong to patients, ``splits_final.json`` with folds by patient.
nnU-Net (2.8) copies a ``splits_final.json`` of the raw folder into ``nnUNet_preprocessed/
DatasetNNN_<Name>/`` when it plans the dataset, and trains every fold from it.

Specs:

* ``nuclei``: stardist's 3-D nuclei volume (``img3d.tif``, ``mask3d.tif``: 31 x 61 x 57 voxels,
  uint16, about 50 nuclei; the mask an instance labelling, written here as binary foreground). One
  volume is too few cases for nnU-Net's five folds, so it is cut into 2 x 3 disjoint blocks along
  rows and columns (every slice): 6 cases of about 31 x 30 x 19 voxels. The blocks are parts of
  one image, not patients: nuclei that straddle a block boundary are cut (the number is written to
  dataset.json's description) and the blocks of one fold are neighbours of the others; use it to
  try nnU-Net's pipeline, not to claim a result. The TIFF records no voxel size: the spacing is
  written as 1 x 1 x 1 (voxel units). Intensities are the raw uint16 values (nnU-Net normalises).
* ``lung-ct``: the lung CT of ``pdcr_seg.data.lung_ct.lung_ct_cases()`` (Hounsfield units, the
  tumour mask and the CT's spacing), one case per volume, folds leave-one-patient-out.
* ``folder:PATH``: a Decathlon folder (``imagesTr/*.nii.gz`` with ``labelsTr/`` of the same names,
  optional ``imagesTs/`` and ``dataset.json`` whose ``modality`` and ``labels`` name the channels
  and classes); multi-modal 4-D volumes are split into one file per channel with the same affine;
  3-D volumes and labels are copied byte for byte (their spacing and orientation untouched).

An existing dataset with the same id is never touched: the command refuses (nnU-Net finds datasets
by id). Everything is written into a temporary folder first and moved into place at the end.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from . import NnunetError

FILE_ENDING = ".nii.gz"
NUCLEI_BLOCKS = (2, 3)  # rows x columns


@dataclass
class Case:
    """One training case: channels (C, D, H, W), a label (D, H, W), spacing (dz, dy, dx) in mm."""

    name: str
    channels: np.ndarray
    label: np.ndarray
    spacing: tuple[float, float, float]
    patient: str | None = None


@dataclass
class Dataset:
    name: str  # DatasetNNN_<name>
    channel_names: dict[str, str]  # {"0": "CT"}: nnU-Net normalises "CT" channels by CT statistics
    labels: dict[str, int]  # {"background": 0, ...}, consecutive
    cases: list[Case] = field(default_factory=list)
    description: str = ""
    reference: str = ""
    licence: str = ""
    copy_from: str | None = None  # folder:PATH copies NIfTI files instead of writing arrays


# -- writing ------------------------------------------------------------------------------------


def write_nifti(array: np.ndarray, spacing, path: Path) -> None:
    """A (D, H, W) array as NIfTI with voxel size `spacing` = (dz, dy, dx) mm: nibabel's (x, y, z)
    axis order, the spacing on the diagonal of both qform and sform (what SimpleITK, nnU-Net's
    reader, takes its spacing from)."""
    import nibabel

    dz, dy, dx = (float(s) for s in spacing)
    affine = np.diag([dx, dy, dz, 1.0])
    image = nibabel.Nifti1Image(np.ascontiguousarray(array.transpose(2, 1, 0)), affine)
    image.set_qform(affine, code=1)
    image.set_sform(affine, code=1)
    image.header.set_xyzt_units("mm")
    nibabel.save(image, str(path))


def folds_by_patient(cases: list[Case], max_folds: int = 5) -> list[dict]:
    """nnU-Net's splits_final.json with no patient on both sides: leave-one-patient-out up to
    `max_folds` patients, else `max_folds` groups of patients (sorted, dealt round-robin)."""
    patients = sorted({c.patient for c in cases})
    groups = [patients[i::max_folds] for i in range(min(max_folds, len(patients)))]
    folds = []
    for group in groups:
        val = sorted(c.name for c in cases if c.patient in group)
        train = sorted(c.name for c in cases if c.patient not in group)
        folds.append({"train": train, "val": val})
    return folds


def _dataset_json(dataset: Dataset, num_training: int) -> dict:
    out = {"channel_names": dataset.channel_names, "labels": dataset.labels,
           "numTraining": num_training, "file_ending": FILE_ENDING, "name": dataset.name}
    for key in ("description", "reference", "licence"):
        if getattr(dataset, key):
            out[key] = getattr(dataset, key)
    return out


def raw_root(raw: str | None) -> Path:
    root = raw or os.environ.get("nnUNet_raw")
    if not root:
        raise NnunetError("set nnUNet_raw (nnU-Net's raw data folder) or give --raw DIR")
    return Path(root)


def write_dataset(dataset: Dataset, dataset_id: int, raw: str | None = None) -> Path:
    """Writes nnUNet_raw/DatasetNNN_<name>; refuses an id that exists. Returns the folder."""
    if isinstance(dataset_id, bool) or not isinstance(dataset_id, int) or not 1 <= dataset_id <= 999:
        raise NnunetError(f"--id must be an integer in 1..999 (nnU-Net's dataset ids), got {dataset_id!r}")
    root = raw_root(raw)
    root.mkdir(parents=True, exist_ok=True)
    prefix = f"Dataset{dataset_id:03d}_"
    taken = sorted(p.name for p in root.iterdir() if p.name.startswith(prefix))
    if taken:
        raise NnunetError(f"{root / taken[0]} exists: nnU-Net finds datasets by id; choose another --id "
                          f"(nothing was written)")
    target = root / f"{prefix}{dataset.name}"
    partial = root / f".{target.name}.partial"
    shutil.rmtree(partial, ignore_errors=True)
    try:
        (partial / "imagesTr").mkdir(parents=True)
        (partial / "labelsTr").mkdir()
        if dataset.copy_from is not None:
            count = _copy_decathlon(Path(dataset.copy_from), partial)
        else:
            for case in dataset.cases:
                for c, channel in enumerate(case.channels):
                    write_nifti(channel, case.spacing, partial / "imagesTr" / f"{case.name}_{c:04d}{FILE_ENDING}")
                write_nifti(case.label.astype(np.uint8), case.spacing, partial / "labelsTr" / f"{case.name}{FILE_ENDING}")
            count = len(dataset.cases)
            if any(c.patient is not None for c in dataset.cases):
                (partial / "splits_final.json").write_text(json.dumps(folds_by_patient(dataset.cases), indent=2) + "\n")
        (partial / "dataset.json").write_text(json.dumps(_dataset_json(dataset, count), indent=2) + "\n")
        partial.rename(target)
    finally:
        shutil.rmtree(partial, ignore_errors=True)
    return target


# -- sources ------------------------------------------------------------------------------------


def nuclei_dataset() -> Dataset:
    """stardist's 3-D nuclei volume cut into 2 x 3 blocks (see the module docstring)."""
    import tifffile

    from ..data.nuclei import data_dir

    folder = data_dir()
    image = tifffile.imread(folder / "img3d.tif")
    instances = tifffile.imread(folder / "mask3d.tif")
    if image.shape != instances.shape or image.ndim != 3:
        raise NnunetError(f"nuclei: img3d {image.shape} and mask3d {instances.shape} must be equal 3-D shapes")
    rows = np.array_split(np.arange(image.shape[1]), NUCLEI_BLOCKS[0])
    cols = np.array_split(np.arange(image.shape[2]), NUCLEI_BLOCKS[1])
    cases, owner = [], np.zeros(instances.shape, np.int64)
    for i, r in enumerate(rows):
        for j, c in enumerate(cols):
            block = np.s_[:, r[0]:r[-1] + 1, c[0]:c[-1] + 1]
            owner[block] = len(cases)
            cases.append(Case(f"nuclei_r{i}c{j}", image[block][None].astype(np.float32),
                              (instances[block] > 0).astype(np.uint8), (1.0, 1.0, 1.0)))
    ids = instances[instances > 0]
    cut = sum(len(np.unique(owner[instances == k])) > 1 for k in np.unique(ids))
    shape = "x".join(map(str, image.shape))
    return Dataset(
        "Nuclei3D", {"0": "fluorescence"}, {"background": 0, "nucleus": 1}, cases,
        description=(f"stardist's 3-D nuclei volume ({shape} voxels, {len(np.unique(ids))} nuclei) cut into "
                     f"{NUCLEI_BLOCKS[0]} x {NUCLEI_BLOCKS[1]} blocks along rows and columns: "
                     f"{len(cases)} cases of one image, not patients; {cut} nuclei straddle a block "
                     f"boundary and are cut. The TIFF records no voxel size: spacing 1 x 1 x 1 (voxels)."),
        reference="stardist (data/images/img3d.tif, mask3d.tif), https://github.com/stardist/stardist",
        licence="BSD-3-Clause (stardist)")


def lung_ct_dataset() -> Dataset:
    """The lung CT cases of pdcr_seg.data.lung_ct, one per volume, folds by patient."""
    try:
        from ..data.lung_ct import lung_ct_cases
    except ModuleNotFoundError as error:
        if error.name not in ("pdcr_seg.data.lung_ct",):
            raise
        raise NnunetError("--data lung-ct needs pdcr_seg.data.lung_ct, which this version of pdcr_seg "
                          "does not have") from None
    cases = []
    per_patient: dict[str, int] = {}
    for patient, image_hu, mask, spacing in lung_ct_cases():
        k = per_patient[str(patient)] = per_patient.get(str(patient), -1) + 1
        name = _case_name(f"{patient}" if k == 0 else f"{patient}_{k}")
        cases.append(Case(name, np.asarray(image_hu, np.float32)[None], np.asarray(mask, np.uint8),
                          tuple(float(s) for s in spacing), patient=str(patient)))
    if not cases:
        raise NnunetError("lung-ct: the loader returned no cases")
    return Dataset(
        "LungCT", {"0": "CT"}, {"background": 0, "tumour": 1}, cases,
        description=(f"chest CT of {len(per_patient)} lung-cancer patients with the GTV-1 tumour contour "
                     f"(the Radiomics Digital Phantom shipped with pycerr), Hounsfield units, the CT's "
                     f"spacing; splits_final.json: folds by patient"),
        reference="pycerr 2.5.1, cerr/datasets/radiomics_phantom_dicom",
        licence="CC BY-NC 3.0 (non-commercial use only)")


def _case_name(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_-]+", "_", text)


def _decathlon_images(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.name.endswith(FILE_ENDING) and not p.name.startswith("."))


def decathlon_dataset(path: str) -> Dataset:
    """A Decathlon folder: checked here, copied by _copy_decathlon."""
    import nibabel

    root = Path(path)
    if not root.is_dir():
        raise NnunetError(f"folder:{path}: no such folder")
    images, labels = root / "imagesTr", root / "labelsTr"
    if not images.is_dir() or not labels.is_dir():
        raise NnunetError(f"folder:{path} must hold imagesTr/ and labelsTr/ (the Decathlon layout)")
    files = _decathlon_images(images)
    if not files:
        raise NnunetError(f"{images} holds no {FILE_ENDING} volumes")
    missing = [p.name for p in files if not (labels / p.name).is_file()]
    if missing:
        raise NnunetError(f"{len(missing)} volumes have no label in {labels}: {', '.join(missing[:3])}")
    meta = {}
    if (root / "dataset.json").is_file():
        meta = json.loads((root / "dataset.json").read_text())
    channels = {_num_channels(nibabel.load(str(p))) for p in files}
    if len(channels) != 1:
        raise NnunetError(f"the volumes of {images} have different channel counts: {sorted(channels)}")
    modality = meta.get("modality") or meta.get("channel_names") or {str(c): f"channel{c}" for c in range(channels.pop())}
    values = set()
    for p in files:
        label = np.asarray(nibabel.load(str(labels / p.name)).dataobj)
        if np.any(label != np.round(label)) or label.min() < 0:
            raise NnunetError(f"label {p.name} must hold non-negative integers")
        values |= set(np.unique(label).astype(int).tolist())
    if "labels" in meta:  # MSD: {"0": "background", "1": "tumour"}; nnU-Net: {"background": 0}
        named = meta["labels"]
        label_names = ({v: int(k) for k, v in named.items()} if all(k.isdigit() for k in named)
                       else {k: int(v) for k, v in named.items()})
    else:
        label_names = {"background": 0, **{f"class{v}": v for v in sorted(values) if v}}
    if sorted(label_names.values()) != list(range(len(label_names))) or not values <= set(label_names.values()):
        raise NnunetError(f"labels of {labels} must be consecutive integers 0..K named in dataset.json, "
                          f"found {sorted(values)} for {label_names}")
    name = _case_name(str(meta.get("name") or root.name).title().replace(" ", ""))
    name = re.sub(r"^Task\d+_", "", name) or "Folder"
    return Dataset(name, {str(k): str(v) for k, v in modality.items()}, label_names,
                   description=str(meta.get("description", f"converted from {root}")),
                   reference=str(meta.get("reference", "")), licence=str(meta.get("licence", "")),
                   copy_from=str(root))


def _num_channels(image) -> int:
    return image.shape[3] if len(image.shape) == 4 else 1


def _copy_decathlon(root: Path, out: Path) -> int:
    import nibabel

    def copy_image(src: Path, folder: Path) -> None:
        case = src.name[:-len(FILE_ENDING)]
        image = nibabel.load(str(src))
        if len(image.shape) == 3:
            shutil.copyfile(src, folder / f"{case}_0000{FILE_ENDING}")
            return
        for c in range(image.shape[3]):  # MSD's 4-D multi-modal volumes: one file per channel
            channel = nibabel.Nifti1Image(np.asarray(image.dataobj[..., c]), image.affine, image.header)
            nibabel.save(channel, str(folder / f"{case}_{c:04d}{FILE_ENDING}"))

    files = _decathlon_images(root / "imagesTr")
    for src in files:
        copy_image(src, out / "imagesTr")
        shutil.copyfile(root / "labelsTr" / src.name, out / "labelsTr" / src.name)
    if (root / "imagesTs").is_dir():
        (out / "imagesTs").mkdir()
        for src in _decathlon_images(root / "imagesTs"):
            copy_image(src, out / "imagesTs")
    return len(files)


def build(spec: str) -> Dataset:
    if spec == "nuclei":
        return nuclei_dataset()
    if spec == "lung-ct":
        return lung_ct_dataset()
    if spec.startswith("folder:") and len(spec) > len("folder:"):
        return decathlon_dataset(spec[len("folder:"):])
    raise NnunetError(f"--data must be nuclei, lung-ct or folder:PATH, got {spec!r}")


def convert(spec: str, dataset_id: int, raw: str | None = None) -> Path:
    """``pdcr-seg nnunet convert``: the dataset of `spec` as nnUNet_raw/DatasetNNN_<Name>."""
    from ..data import DataError

    try:
        dataset = build(spec)
    except DataError as error:
        raise NnunetError(str(error)) from None
    return write_dataset(dataset, dataset_id, raw)
