"""pdcr-seg through its command line: train -> eval -> predict, resume, and bad input."""

import json

import numpy as np
import pytest
from PIL import Image

from pdcr_seg.cli import main

# 10 training images (fraction 0.1 of 96), batches of 4: 2 steps per epoch
TINY = ["--data", "synthetic", "--fraction", "0.1", "--model", "unet", "--width", "4", "--image-size", "32",
        "--batch-size", "4", "--overlays", "2", "--device", "cpu"]


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    code = main(["train", *TINY, "--pdcr", "--uafr", "--epochs", "2", "--max-steps", "3", "--out", str(out)])
    assert code == 0
    return out


def test_train_writes_every_file(trained):
    for name in ("checkpoint_best.pt", "checkpoint_last.pt", "config.yaml", "summary.json", "progress.png"):
        assert (trained / name).is_file(), name
    overlays = sorted((trained / "overlays").glob("*.png"))
    assert len(overlays) == 2 and all(Image.open(p).size[0] > 100 for p in overlays)
    summary = json.loads((trained / "summary.json").read_text())
    assert summary["config"]["pdcr"] and summary["config"]["uafr"]
    assert summary["complexity"]["parameters"] > summary["complexity"]["parameters_inference"] > 0
    assert summary["complexity"]["flops"] == 2 * summary["complexity"]["macs"] > 0
    assert [e["epoch"] for e in summary["epochs"]] == [0, 1] and summary["steps"] == 3
    for epoch in summary["epochs"]:
        assert {"train_loss", "train_seg", "train_pdcr", "train_terms", "val", "seconds_per_step"} <= set(epoch)
        # --pdcr: the paper's main setting, encoder stages 2-4, every decoder stage and the pair
        assert set(epoch["train_terms"]) == {"enc2", "enc3", "enc4", "dec4", "dec3", "dec2", "dec1", "enc2~enc3"}
        assert 0 <= epoch["val"]["dice"] <= 1
    test = summary["test"]
    assert {"dice", "jaccard", "accuracy", "hd95"} <= set(test) and 0 <= test["accuracy"] <= 1
    assert summary["seconds_per_step"] > 0


def test_eval_and_predict(trained, tmp_path, capsys):
    out = tmp_path / "eval"
    assert main(["eval", "--checkpoint", str(trained / "checkpoint_best.pt"), "--out", str(out), "--device", "cpu",
                 "--overlays", "1"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    summary = json.loads((trained / "summary.json").read_text())
    assert metrics["dice"] == pytest.approx(summary["test"]["dice"])  # the same model, the same split
    assert len(list((out / "overlays").glob("*.png"))) == 1
    printed = capsys.readouterr().out
    assert "nan" not in printed.lower() and "HD95" in printed  # an undefined HD95 reads n/a, as in train

    images = tmp_path / "images"
    images.mkdir()
    rng = np.random.default_rng(0)
    Image.fromarray((rng.random((40, 52)) * 255).astype(np.uint8)).save(images / "a.png")
    Image.fromarray((rng.random((30, 30, 3)) * 255).astype(np.uint8)).save(images / "b.png")  # RGB -> grey
    masks = tmp_path / "masks"
    assert main(["predict", "--checkpoint", str(trained / "checkpoint_best.pt"), "--input", str(images),
                 "--out", str(masks), "--device", "cpu"]) == 0
    a = Image.open(masks / "a_mask.png")
    assert a.mode == "P" and a.size == (52, 40)  # a palette PNG of the image's own size
    assert set(np.unique(np.array(a))) <= {0, 1}  # class indices
    assert a.getpalette()[:6] == [0, 0, 0, 255, 255, 255]  # shown black / white
    assert np.array(Image.open(masks / "b_mask.png")).shape == (30, 30)
    assert np.array(Image.open(masks / "a_uncertainty.png")).shape == (40, 52, 3)
    listed = (masks / "predictions.csv").read_text().splitlines()
    assert listed[0] == "input,mask,uncertainty,error" and len(listed) == 3


def test_predict_on_a_real_folder(trained, tmp_path, capsys):
    """Shared stems, a corrupt file, a macOS ._ file, an EXIF-rotated photograph."""
    images = tmp_path / "in"
    images.mkdir()
    rng = np.random.default_rng(1)
    pixels = lambda h, w: (rng.random((h, w, 3)) * 255).astype(np.uint8)
    Image.fromarray(pixels(20, 30)).save(images / "same.png")
    Image.fromarray(pixels(20, 30)).save(images / "same.jpg")
    (images / "broken.png").write_bytes(b"\x89PNG not really")
    (images / "._same.png").write_bytes(b"\x00\x05\x16\x07 AppleDouble")
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: the viewer turns it 90 degrees: 40 x 24 stored, 24 x 40 shown
    Image.fromarray(pixels(24, 40)).save(images / "phone.jpg", exif=exif)
    Image.fromarray(pixels(16, 16)).save(images / "later.png")
    out = tmp_path / "masks"
    code = main(["predict", "--checkpoint", str(trained / "checkpoint_best.pt"), "--input", str(images),
                 "--out", str(out), "--device", "cpu"])
    err = capsys.readouterr().err
    assert code == 1  # one failed: a non-zero status at the end
    assert "broken.png" in err and "1 of 5 images failed" in err and "Traceback" not in err
    written = sorted(p.name for p in out.glob("*_mask.png"))
    assert written == ["later_mask.png", "phone_mask.png", "same.jpg_mask.png", "same.png_mask.png"]
    assert Image.open(out / "phone_mask.png").size == (24, 40)  # the frame a viewer shows
    rows = {row.split(",")[0].rsplit("/", 1)[-1]: row for row in (out / "predictions.csv").read_text().splitlines()}
    assert "cannot read" in rows["broken.png"] and "._same.png" not in rows


def test_palette_colours_every_class():
    from pdcr_seg.predict import palette

    colours = palette(4)
    triples = [tuple(colours[3 * i:3 * i + 3]) for i in range(4)]
    assert triples[0] == (0, 0, 0) and len(set(triples)) == 4


def test_resume_continues_where_it_stopped(tmp_path, capsys):
    out = str(tmp_path / "run")
    assert main(["train", *TINY, "--uafr", "--epochs", "3", "--max-steps", "1", "--out", out]) == 0
    first = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert first["steps"] == 1 and len(first["epochs"]) == 1
    assert main(["train", "--resume", "--max-steps", "3", "--out", out]) == 0
    assert "resumed from checkpoint_last.pt: 1 epochs, 1 steps done" in capsys.readouterr().out
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["steps"] == 3 and [e["epoch"] for e in summary["epochs"]] == [0, 1]
    assert summary["epochs"][0] == first["epochs"][0]  # the first epoch is kept, not redone
    assert summary["config"]["uafr"] and summary["config"]["max_steps"] == 3
    assert summary["run_id"] == first["run_id"]


def test_eval_works_from_any_directory(tmp_path, monkeypatch):
    """The run stores its data folder as an absolute path."""
    rng = np.random.default_rng(2)
    for i in range(6):
        mask = np.zeros((32, 32), np.uint8)
        mask[4:20, 6:22] = 255
        for sub, array in (("images", (rng.random((32, 32)) * 255).astype(np.uint8)), ("masks", mask)):
            (tmp_path / "work" / "data" / sub).mkdir(parents=True, exist_ok=True)
            Image.fromarray(array).save(tmp_path / "work" / "data" / sub / f"c{i}.png")
    monkeypatch.chdir(tmp_path / "work")
    assert main(["train", *TINY, "--data", "folder:data", "--fraction", "1", "--epochs", "1", "--max-steps", "1",
                 "--overlays", "0", "--out", "run"]) == 0
    assert json.loads((tmp_path / "work" / "run" / "summary.json").read_text())["config"]["data"] == \
        f"folder:{tmp_path / 'work' / 'data'}"
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    assert main(["eval", "--checkpoint", str(tmp_path / "work" / "run" / "checkpoint_best.pt"), "--out", "e",
                 "--device", "cpu", "--overlays", "0"]) == 0


def test_config_file_and_command_line(tmp_path):
    from pdcr_seg.cli import parser, train_config

    config = tmp_path / "c.yaml"
    config.write_text("model: fcn\nepochs: 7\npdcr: true\npdcr-weight: 0.5\n")
    cfg = train_config(parser().parse_args(["train", "--config", str(config), "--epochs", "3"]))
    assert (cfg.model, cfg.epochs, cfg.pdcr, cfg.pdcr_weight) == ("fcn", 3, True, 0.5)
    config.write_text("modle: fcn\n")
    with pytest.raises(ValueError, match="unknown setting"):
        train_config(parser().parse_args(["train", "--config", str(config)]))


def test_yaml_values_are_converted_to_the_declared_types(tmp_path):
    from pdcr_seg.cli import parser, train_config
    from pdcr_seg.config import ConfigError

    config = tmp_path / "c.yaml"
    # PyYAML reads 1e-3 as a string and "3" is quoted: both become numbers; pairs may be "A:B"
    config.write_text('lr: 1e-3\nepochs: "3"\npdcr: yes\npdcr_cross: ["enc2:enc3"]\npdcr_layers: [enc2, enc3]\n')
    cfg = train_config(parser().parse_args(["train", "--config", str(config)]))
    assert (cfg.lr, cfg.epochs, cfg.pdcr) == (0.001, 3, True) and type(cfg.lr) is float and type(cfg.epochs) is int
    assert cfg.pdcr_cross == [["enc2", "enc3"]] and cfg.pdcr_layers == ["enc2", "enc3"]
    for text, words in (('pdcr: "no"', ["pdcr", "true or false"]), ('uafr: "false"', ["uafr", "true or false"]),
                        ("pdcr_layers: enc2", ["pdcr_layers", "a list"]), ("epochs: three", ["epochs", "integer"]),
                        ("epochs: 2.5", ["epochs", "integer"]), ("lr: fast", ["lr", "a number"]),
                        ("data: 5", ["data", "a string"]), ("batch_size: true", ["batch_size", "integer"])):
        config.write_text(text + "\n")
        with pytest.raises(ConfigError) as error:
            train_config(parser().parse_args(["train", "--config", str(config)]))
        message = str(error.value)
        assert "\n" not in message and str(config) in message and all(w in message for w in words), message


def test_console_script_and_module_entry_points():
    """`make` writes .venv/bin/pdcr-seg; `python -m pdcr_seg` works everywhere."""
    import subprocess
    import sys
    from pathlib import Path

    out = subprocess.run([sys.executable, "-m", "pdcr_seg", "--help"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and "train" in out.stdout and "predict" in out.stdout
    script = Path(sys.executable).parent / "pdcr-seg"
    if Path(sys.prefix).name == ".venv":  # the Makefile's environment: the script must be there
        out = subprocess.run([str(script), "train", "--help"], capture_output=True, text=True, timeout=60)
        assert out.returncode == 0 and "--pdcr" in out.stdout
