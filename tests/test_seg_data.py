"""pdcr_seg.data: the synthetic set, the nuclei image, folders of images and masks, augmentation."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from pdcr_seg.data import DataError, DataUnavailable, build_datasets
from pdcr_seg.data import nuclei
from pdcr_seg.data.synthetic import make_synthetic
from pdcr_seg.data.transforms import eval_transforms, train_transforms


pytestmark = pytest.mark.usefixtures("one_thread")


def items(dataset):
    return [dataset[i] for i in range(len(dataset))]


def check_item(item, channels, size, num_classes):
    assert set(item) >= {"image", "label", "name"} and isinstance(item["name"], str)
    assert item["image"].dtype == torch.float32 and item["image"].shape == (channels, size, size)
    assert item["label"].dtype == torch.int64 and item["label"].shape == (1, size, size)
    assert type(item["image"]) is torch.Tensor  # plain tensors, no MetaTensor
    assert 0 <= int(item["label"].min()) and int(item["label"].max()) < num_classes


# ---- folders ------------------------------------------------------------------------------------

def save(path, array):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


def lesion_pair(rng, h=30, w=40, high=255):
    """An RGB image and a 0/high mask of a rectangle, (h, w)."""
    mask = np.zeros((h, w), np.uint8)
    mask[5:20, 8:30] = high
    image = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    return image, mask


def write_isic(folder, names, rng, image_dir=None, mask_dir=None):
    for name in names:
        image, mask = lesion_pair(rng)
        save((image_dir or folder) / f"{name}.jpg", image)
        save((mask_dir or folder) / f"{name}_Segmentation.png", mask)


def test_isic_layout_in_one_folder(tmp_path):
    rng = np.random.default_rng(0)
    write_isic(tmp_path, [f"ISIC_{i:07d}" for i in range(10)], rng)
    # ISIC 2017 ships superpixel maps beside the images: not images of the set
    save(tmp_path / "ISIC_0000000_superpixels.png", np.zeros((30, 40, 3), np.uint8))
    b = build_datasets(f"folder:{tmp_path}", image_size=32, augment=False)
    assert (len(b.train), len(b.val), len(b.test)) == (7, 1, 2)  # seeded 70 / 10 / 20
    assert (b.in_channels, b.num_classes, b.class_names) == (3, 2, ("background", "lesion"))
    for item in items(b.train) + items(b.test):
        check_item(item, 3, 32, 2)
        assert item["name"].startswith("ISIC_") and set(item["label"].unique().tolist()) == {0, 1}
    assert "\n" not in b.description and "7 train / 1 val / 2 test" in b.description
    names = sorted(i["name"] for d in (b.train, b.val, b.test) for i in items(d))
    assert names == [f"ISIC_{i:07d}" for i in range(10)]  # every pair once


def test_isic_sibling_folders_keep_the_official_split(tmp_path):
    rng = np.random.default_rng(1)
    train = [f"ISIC_{i:07d}" for i in range(8)]
    test = [f"ISIC_{i:07d}" for i in range(100, 103)]
    write_isic(tmp_path, train, rng, tmp_path / "ISBI2016_ISIC_Part1_Training_Data",
               tmp_path / "ISBI2016_ISIC_Part1_Training_GroundTruth")
    write_isic(tmp_path, test, rng, tmp_path / "ISBI2016_ISIC_Part1_Test_Data",
               tmp_path / "ISBI2016_ISIC_Part1_Test_GroundTruth")
    b = build_datasets(f"folder:{tmp_path}", image_size=24, augment=False)
    assert sorted(i["name"] for i in items(b.test)) == test
    assert (len(b.train), len(b.val)) == (7, 1)  # val: a seeded eighth of train
    assert sorted(i["name"] for i in items(b.train) + items(b.val)) == train


def test_images_masks_layout_with_train_test_and_class_indices(tmp_path):
    rng = np.random.default_rng(2)
    for split, n in (("train", 6), ("test", 2)):
        for i in range(n):
            mask = np.zeros((20, 20), np.uint8)
            mask[2:10, 2:10], mask[12:18, 12:18] = 1, 2  # class indices 0, 1, 2
            image = rng.integers(0, 256, (20, 20), dtype=np.uint8)
            save(tmp_path / split / "images" / f"case{i}.png", image)
            save(tmp_path / split / "masks" / f"case{i}.png", mask)
    # a 16-bit tif image is read and normalised too
    import tifffile
    image16 = rng.integers(0, 4000, (20, 20), dtype=np.uint16)
    tifffile.imwrite(tmp_path / "train" / "images" / "case9.tif", image16)
    save(tmp_path / "train" / "masks" / "case9.png", np.zeros((20, 20), np.uint8))

    b = build_datasets(f"folder:{tmp_path}", image_size=16, augment=False)
    assert (b.in_channels, b.num_classes) == (1, 3) and len(b.class_names) == 3
    assert (len(b.train), len(b.val), len(b.test)) == (6, 1, 2)
    for item in items(b.train) + items(b.val) + items(b.test):
        check_item(item, 1, 16, 3)
        assert 0.0 <= item["image"].min() and item["image"].max() <= 1.0
    assert {2} <= set(items(b.test)[0]["label"].unique().tolist())  # nearest resizing keeps classes
    assert build_datasets(f"folder:{tmp_path}", image_size=16, num_classes=5).num_classes == 5


def test_binary_255_masks_become_0_1(tmp_path):
    rng = np.random.default_rng(3)
    for i in range(4):
        image, mask = lesion_pair(rng, 16, 16)
        save(tmp_path / "images" / f"a{i}.jpg", image)
        save(tmp_path / "masks" / f"a{i}.png", mask)
    b = build_datasets(f"folder:{tmp_path}", image_size=16, augment=False)
    assert b.num_classes == 2 and b.class_names == ("background", "foreground")
    assert set(items(b.train)[0]["label"].unique().tolist()) == {0, 1}


# ---- users' layouts ------------------------------------------------------------------------------

def jpeg_mask(h=30, w=40, quality=75):
    """A 0/255 rectangle mask as a JPEG stores it: values spread around 0 and 255 near the edges."""
    import io

    _, mask = lesion_pair(np.random.default_rng(0), h, w)
    buffer = io.BytesIO()
    Image.fromarray(mask).save(buffer, format="JPEG", quality=quality)
    return np.array(Image.open(buffer)), mask


def labels_of(bundle):
    return [set(item["label"].unique().tolist()) for d in (bundle.train, bundle.val, bundle.test) for item in items(d)]


def test_isic_masks_saved_as_jpeg_are_thresholded_with_a_note(tmp_path):
    rng = np.random.default_rng(5)
    stored, truth = jpeg_mask()
    assert len(np.unique(stored)) > 2  # really a JPEG's grey levels, not a clean 0/255
    for i in range(5):
        image, _ = lesion_pair(rng)
        save(tmp_path / f"ISIC_{i:07d}.jpg", image)
        save(tmp_path / f"ISIC_{i:07d}_Segmentation.jpg", stored.astype(np.uint8))
    b = build_datasets(f"folder:{tmp_path}", image_size=40, augment=False)
    assert b.num_classes == 2 and len(b.notes) == 1 and "near-binary" in b.notes[0] and "\n" not in b.notes[0]
    label = items(b.train)[0]["label"][0].numpy()
    resized_truth = np.array(Image.fromarray(truth).resize((40, 40), Image.NEAREST)) > 0
    assert (label == resized_truth).mean() > 0.98  # half the maximum recovers the drawn mask


def test_kvasir_style_jpeg_images_and_masks(tmp_path):
    rng = np.random.default_rng(6)
    stored, _ = jpeg_mask(quality=60)
    for i in range(6):
        save(tmp_path / "Kvasir-SEG" / "images" / f"cju{i}.jpg", lesion_pair(rng)[0])
        save(tmp_path / "Kvasir-SEG" / "masks" / f"cju{i}.jpg", stored.astype(np.uint8))
    b = build_datasets(f"folder:{tmp_path}", image_size=32, augment=False)
    assert b.num_classes == 2 and all(values <= {0, 1} for values in labels_of(b))
    assert "thresholded" in b.description and any("near-binary" in n for n in b.notes)
    with pytest.raises(DataError, match="near-binary.*num_classes=256"):  # not a 256-class task
        build_datasets(f"folder:{tmp_path}", image_size=32, num_classes=256)


def test_anti_aliased_png_masks_are_near_binary(tmp_path):
    rng = np.random.default_rng(7)
    for i in range(4):
        mask = np.zeros((64, 64), np.float32)
        mask[16:48, 20:52] = 255
        soft = np.asarray(Image.fromarray(mask.astype(np.uint8)).resize((32, 32), Image.BILINEAR))  # soft edges
        save(tmp_path / "images" / f"a{i}.png", rng.integers(0, 255, (32, 32), dtype=np.uint8))
        save(tmp_path / "masks" / f"a{i}.png", soft)
    b = build_datasets(f"folder:{tmp_path}", image_size=32, augment=False)
    assert b.num_classes == 2 and any("near-binary" in n for n in b.notes)


def test_a_grey_image_as_mask_is_not_taken_for_near_binary(tmp_path):
    rng = np.random.default_rng(8)
    for i in range(4):
        save(tmp_path / "images" / f"a{i}.png", rng.integers(0, 255, (16, 16), dtype=np.uint8))
        save(tmp_path / "masks" / f"a{i}.png", rng.integers(0, 255, (16, 16), dtype=np.uint8))
    with pytest.raises(DataError, match="neither binary nor near-binary.*pass num_classes"):
        build_datasets(f"folder:{tmp_path}", image_size=16)


def test_the_authors_repository_layout_train_and_val_without_test(tmp_path):
    """train/img + train/mask_jpg and val/img + val/mask_jpg: test is drawn from train, with a note."""
    rng = np.random.default_rng(9)
    stored, _ = jpeg_mask()
    for split, n in (("train", 10), ("val", 3)):
        for i in range(n):
            name = f"ISIC_{100 * (split == 'val') + i:07d}"
            save(tmp_path / split / "img" / f"{name}.jpg", lesion_pair(rng)[0])
            save(tmp_path / split / "mask_jpg" / f"{name}_Segmentation.jpg", stored.astype(np.uint8))
    b = build_datasets(f"folder:{tmp_path}", image_size=24, augment=False)
    assert (len(b.train), len(b.val), len(b.test)) == (8, 3, 2)  # a seeded fifth of train is the test split
    assert sorted(i["name"] for i in items(b.val)) == [f"ISIC_{100 + i:07d}" for i in range(3)]
    assert any("no test folder" in n and "seeded fifth" in n for n in b.notes)
    again = build_datasets(f"folder:{tmp_path}", image_size=24, augment=False)
    assert [i["name"] for i in items(again.test)] == [i["name"] for i in items(b.test)]  # seeded


def test_isic_2018_training_download_only(tmp_path):
    rng = np.random.default_rng(10)
    names = [f"ISIC_{i:07d}" for i in range(10)]
    write_isic(tmp_path, names, rng, tmp_path / "ISIC2018_Task1-2_Training_Input",
               tmp_path / "ISIC2018_Task1_Training_GroundTruth")
    for path in (tmp_path / "ISIC2018_Task1_Training_GroundTruth").iterdir():  # 2018 spells it in lower case
        path.rename(path.with_name(path.name.replace("_Segmentation", "_segmentation")))
    b = build_datasets(f"folder:{tmp_path}", image_size=24, augment=False)
    assert (len(b.train), len(b.val), len(b.test)) == (7, 1, 2)
    assert any("only training folders" in n and "70/10/20" in n for n in b.notes)


def test_train_images_and_train_masks_folders(tmp_path):
    rng = np.random.default_rng(11)
    for split, n in (("train", 6), ("test", 2)):
        for i in range(n):
            image, mask = lesion_pair(rng, 20, 20)
            save(tmp_path / f"{split}_images" / f"{split}{i}.png", image)
            save(tmp_path / f"{split}_masks" / f"{split}{i}.png", mask)
    b = build_datasets(f"folder:{tmp_path}", image_size=16, augment=False)
    assert (len(b.train) + len(b.val), len(b.test)) == (6, 2)
    assert sorted(i["name"] for i in items(b.test)) == ["test0", "test1"]


def test_mixed_0_1_and_0_255_binary_masks(tmp_path):
    rng = np.random.default_rng(12)
    for i in range(6):
        image, mask = lesion_pair(rng, high=1 if i % 2 else 255)
        save(tmp_path / "images" / f"m{i}.png", image)
        save(tmp_path / "masks" / f"m{i}.png", mask)
    b = build_datasets(f"folder:{tmp_path}", image_size=24, augment=False)
    assert b.num_classes == 2 and all(values == {0, 1} for values in labels_of(b))
    assert any("mix 0/1 (3) and 0/255 (3)" in n for n in b.notes)


def test_macos_resource_files_are_ignored_everywhere(tmp_path):
    rng = np.random.default_rng(13)
    write_isic(tmp_path, [f"ISIC_{i:07d}" for i in range(4)], rng)
    for folder in (tmp_path, tmp_path / "__MACOSX"):
        folder.mkdir(exist_ok=True)
        (folder / "._ISIC_0000000.jpg").write_bytes(b"\x00\x05\x16\x07 AppleDouble")
        (folder / "._ISIC_0000000_Segmentation.png").write_bytes(b"\x00\x05\x16\x07 AppleDouble")
    save(tmp_path / "__MACOSX" / "ISIC_0000009.jpg", lesion_pair(rng)[0])  # no mask, but not data either
    b = build_datasets(f"folder:{tmp_path}", image_size=16, augment=False)
    assert len(b.train) + len(b.val) + len(b.test) == 4


def test_exif_orientation_is_applied_to_images_and_masks(tmp_path):
    from pdcr_seg.data.folder import read_image, read_mask

    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees for display
    image = np.zeros((10, 20, 3), np.uint8)
    image[:, :5] = 255  # a white band on the left of the stored pixels
    Image.fromarray(image).save(tmp_path / "photo.jpg", exif=exif, quality=95)
    Image.fromarray(image[..., 0]).save(tmp_path / "photo_mask.png", exif=exif)
    shown = read_image(tmp_path / "photo.jpg")
    assert shown.shape == (3, 20, 10)  # the displayed frame: height and width swapped
    assert shown[0, :5].mean() > 0.9 and shown[0, -5:].mean() < 0.1  # the band is now on top
    assert read_mask(tmp_path / "photo_mask.png").shape == (20, 10)


def bad_folder(tmp_path, problem):
    """Writes a folder with one ``problem``; returns (spec kwargs, words the message must hold)."""
    rng = np.random.default_rng(4)
    if problem == "missing folder":
        return {"spec": f"folder:{tmp_path / 'nowhere'}"}, ["no such folder", "nowhere"]
    write_isic(tmp_path, [f"ISIC_{i:07d}" for i in range(4)], rng)
    if problem == "no images":
        for p in tmp_path.iterdir():
            p.unlink()
        (tmp_path / "notes.txt").write_text("nothing here")
        return {"spec": f"folder:{tmp_path}"}, ["no images"]
    if problem == "image without mask":
        (tmp_path / "ISIC_0000002_Segmentation.png").unlink()
        return {"spec": f"folder:{tmp_path}"}, ["no mask", "ISIC_0000002.jpg"]
    if problem == "mask of another size":
        save(tmp_path / "ISIC_0000001_Segmentation.png", np.zeros((31, 40), np.uint8))
        return {"spec": f"folder:{tmp_path}"}, ["ISIC_0000001_Segmentation.png", "40x31", "40x30"]
    if problem == "label value too large":  # class-index masks (0/1), one holding a 3
        for i in range(4):
            image, mask = lesion_pair(rng, high=3 if i == 2 else 1)
            save(tmp_path / f"ISIC_{i:07d}_Segmentation.png", mask)
        words = ["ISIC_0000002_Segmentation.png", "value 3"]
        return {"spec": f"folder:{tmp_path}", "num_classes": 2}, words
    if problem == "unreadable file":
        (tmp_path / "ISIC_0000001.jpg").write_bytes(b"not a jpeg at all")
        return {"spec": f"folder:{tmp_path}"}, ["cannot read", "ISIC_0000001.jpg"]
    raise AssertionError(problem)


@pytest.mark.parametrize("problem", [
    "missing folder", "no images", "image without mask", "mask of another size",
    "label value too large", "unreadable file",
])
def test_bad_folders_raise_one_clear_data_error(tmp_path, problem):
    kwargs, words = bad_folder(tmp_path, problem)
    with pytest.raises(DataError) as err:
        build_datasets(**kwargs, image_size=16)
    message = str(err.value)
    assert "\n" not in message
    for word in words:
        assert word in message, (problem, message)


def test_bad_specs_and_options():
    with pytest.raises(DataError, match="unknown data spec"):
        build_datasets("imagenet")
    with pytest.raises(DataError, match="unknown option"):
        build_datasets("synthetic", n_train=2, colour=True)
    with pytest.raises(DataError, match="fraction"):
        build_datasets("synthetic", fraction=0.0)
    assert issubclass(DataError, ValueError) and issubclass(DataUnavailable, DataError)


# ---- nuclei -------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def nuclei_bundle():
    nuclei.data_dir()  # the Makefile installs stardist's images: a missing one is a failure
    return build_datasets("nuclei", augment=False)


def test_nuclei_items_are_binary_tiles(nuclei_bundle):
    b = nuclei_bundle
    assert (b.in_channels, b.num_classes, b.class_names) == (1, 2, ("background", "nucleus"))
    assert (len(b.train), len(b.val), len(b.test)) == (64, 3, 4)
    for d in (b.val, b.test):
        for item in items(d):
            check_item(item, 1, 128, 2)
            assert 0.0 <= item["image"].min() and item["image"].max() <= 1.0
    labels = torch.stack([i["label"] for i in items(b.test)])
    assert set(labels.unique().tolist()) == {0, 1}


def test_nuclei_regions_are_disjoint_and_tiles_stay_inside(nuclei_bundle):
    owner = np.zeros(nuclei.IMAGE_SHAPE, np.int64)
    for region in nuclei.REGIONS.values():
        region.crop(owner)[...] += 1
    assert owner.max() == 1  # no pixel in two regions
    assert (owner == 0).sum() == 384 * 384 - 352 * 352  # the guard band belongs to none
    for size in (128, 96, 256):
        for split, boxes in nuclei.tile_boxes(size).items():
            region = nuclei.REGIONS[split]
            assert boxes and all(region.contains(box) for box in boxes), (size, split)
    # the items are those tiles of the normalised image, in order
    image, mask = nuclei.load_nuclei()
    for split in ("val", "test"):
        dataset = getattr(nuclei_bundle, split)
        for box, item in zip(nuclei.tile_boxes(128)[split], items(dataset)):
            assert np.array_equal(item["image"][0].numpy(), box.crop(image))
            assert np.array_equal(item["label"][0].numpy(), box.crop(mask))
    covered = np.zeros(nuclei.IMAGE_SHAPE, bool)
    for box in nuclei.tile_boxes(128)["test"]:
        box.crop(covered)[...] = True
    assert nuclei.REGIONS["test"].crop(covered).all()  # the test grid covers its region


def test_nuclei_guard_band_leaves_no_nucleus_in_two_splits(nuclei_bundle):
    _, instances = nuclei.read_nuclei()
    assert len(np.unique(instances)) - 1 == 125
    assert nuclei.straddling(instances, nuclei.region_masks(nuclei.REGIONS)) == 0
    no_band = dict(nuclei.REGIONS, train=nuclei.Box(0, 384, 0, 384))
    assert nuclei.straddling(instances, nuclei.region_masks(no_band)) == 10  # 5 with val, 5 with test
    for other in ("val", "test"):
        pair = {k: no_band[k] for k in ("train", other)}
        assert nuclei.straddling(instances, nuclei.region_masks(pair)) == 5
    assert "0 of 125 nuclei in two splits, 10 without the band" in nuclei_bundle.description


def test_nuclei_straddling_counts_objects_not_pixels():
    instances = np.array([[1, 1, 0, 2], [0, 3, 3, 2]])
    left, right = np.zeros((2, 4), bool), np.zeros((2, 4), bool)
    left[:, :2], right[:, 2:] = True, True
    assert nuclei.straddling(instances, [left, right]) == 1  # only 3 crosses; 0 is background


def test_nuclei_normalisation_uses_the_training_region_only(monkeypatch):
    raw, instances = nuclei.read_nuclei()
    image, _ = nuclei.load_nuclei()
    lo, hi = np.percentile(nuclei.REGIONS["train"].crop(raw).astype(np.float32), (1, 99.8))
    np.testing.assert_allclose(image, np.clip((raw.astype(np.float32) - lo) / (hi - lo), 0, 1), atol=1e-6)
    changed = raw.copy()
    nuclei.REGIONS["test"].crop(changed)[...] = 65535  # saturate the test region
    monkeypatch.setattr(nuclei, "read_nuclei", lambda: (changed, instances))
    after, _ = nuclei.load_nuclei()
    train = nuclei.REGIONS["train"]
    assert np.array_equal(train.crop(after), train.crop(image))


def test_nuclei_larger_size_resizes_band_tiles():
    b = build_datasets("nuclei", image_size=192, augment=False)
    check_item(b.test[0], 1, 192, 2)
    assert len(b.test) == 4 and "resized" in b.description


def test_nuclei_missing_says_how_to_install(monkeypatch):
    monkeypatch.setattr(nuclei.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(DataUnavailable, match="pip install --no-deps stardist"):
        build_datasets("nuclei")


# ---- synthetic ----------------------------------------------------------------------------------

def test_synthetic_is_deterministic_per_seed():
    a = make_synthetic(seed=5, n_train=4, n_val=1, n_test=1)
    b = make_synthetic(seed=5, n_train=4, n_val=1, n_test=1)
    c = make_synthetic(seed=6, n_train=4, n_val=1, n_test=1)
    for x, y, z in zip(a.train, b.train, c.train):
        assert np.array_equal(x["image"], y["image"]) and np.array_equal(x["label"], y["label"])
        assert not np.array_equal(x["image"], z["image"])
    # an image does not depend on how many are made
    more = make_synthetic(seed=5, n_train=9, n_val=1, n_test=1)
    assert np.array_equal(more.train[3]["image"], a.train[3]["image"])


def test_synthetic_defaults_have_both_classes_and_are_ambiguous():
    b = build_datasets("synthetic", augment=False)
    assert (len(b.train), len(b.val), len(b.test)) == (96, 16, 32)
    assert (b.in_channels, b.num_classes) == (1, 2)
    train = items(b.train)
    check_item(train[0], 1, 128, 2)
    both = [set(i["label"].unique().tolist()) == {0, 1} for i in train]
    assert np.mean(both) > 0.9
    images = torch.stack([i["image"] for i in train])
    labels = torch.stack([i["label"] for i in train])
    fg, bg = images[labels == 1], images[labels == 0]
    # the lesion is darker, but by less than the spread of either class: no clean contrast
    assert 0 < bg.mean() - fg.mean() < min(fg.std(), bg.std())


def test_synthetic_more_classes_and_colour():
    b = build_datasets(
        "synthetic", num_classes=3, channels=3, n_train=6, n_val=1, n_test=1, image_size=64
    )
    assert (b.in_channels, b.num_classes, len(b.class_names)) == (3, 3, 3)
    for item in items(b.val) + items(b.test):
        check_item(item, 3, 64, 3)
        assert set(item["label"].unique().tolist()) == {0, 1, 2}  # lesion with a core


# ---- fraction and augmentation ------------------------------------------------------------------

def test_fraction_is_a_fixed_seeded_subset():
    def names(**kw):
        b = build_datasets(
            "synthetic", n_train=20, n_val=2, n_test=3, image_size=32, augment=False, **kw
        )
        return [i["name"] for i in items(b.train)], len(b.val), len(b.test)

    quarter, n_val, n_test = names(fraction=0.25, seed=3)
    assert len(quarter) == 5 and (n_val, n_test) == (2, 3)
    assert names(fraction=0.25, seed=3)[0] == quarter
    assert set(quarter) <= set(names(fraction=0.5, seed=3)[0])  # nested
    assert len(names(fraction=0.001, seed=3)[0]) == 1


def test_augmentation_keeps_classes_moves_image_and_label_together_and_is_seeded():
    spec = dict(num_classes=3, n_train=6, n_val=1, n_test=1, image_size=64)
    a = build_datasets("synthetic", seed=7, **spec)
    b = build_datasets("synthetic", seed=7, **spec)
    plain = build_datasets("synthetic", seed=7, augment=False, **spec)
    first, second = items(a.train), items(b.train)
    for x, y, p in zip(first, second, items(plain.train)):
        check_item(x, 1, 64, 3)
        assert set(x["label"].unique().tolist()) <= {0, 1, 2}
        # same seed, same augmentation
        assert torch.equal(x["image"], y["image"]) and torch.equal(x["label"], y["label"])
        assert not torch.equal(x["image"], p["image"])  # it did augment
    assert not torch.equal(first[0]["image"], items(a.train)[0]["image"])  # new draws each epoch

    # an image equal to its label: after the transform they still agree off the boundaries
    label = torch.zeros(1, 64, 64, dtype=torch.int64)
    label[:, 10:40, 20:50], label[:, 20:30, 30:40] = 1, 2
    transform = train_transforms(seed=1, image_size=64)
    for _ in range(5):
        out = transform({"image": label.float(), "label": label.clone(), "name": "x"})
        assert set(out["label"].unique().tolist()) <= {0, 1, 2}
        agree = (out["image"].round().long() == out["label"]).float().mean()
        assert agree > 0.95
    assert torch.equal(eval_transforms()({"image": label.float(), "label": label})["label"], label)
