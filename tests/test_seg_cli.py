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


def test_eval_and_predict(trained, tmp_path):
    out = tmp_path / "eval"
    assert main(["eval", "--checkpoint", str(trained / "checkpoint_best.pt"), "--out", str(out), "--device", "cpu",
                 "--overlays", "1"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    summary = json.loads((trained / "summary.json").read_text())
    assert metrics["dice"] == pytest.approx(summary["test"]["dice"])  # the same model, the same split
    assert len(list((out / "overlays").glob("*.png"))) == 1

    images = tmp_path / "images"
    images.mkdir()
    rng = np.random.default_rng(0)
    Image.fromarray((rng.random((40, 52)) * 255).astype(np.uint8)).save(images / "a.png")
    Image.fromarray((rng.random((30, 30, 3)) * 255).astype(np.uint8)).save(images / "b.png")  # RGB -> grey
    masks = tmp_path / "masks"
    assert main(["predict", "--checkpoint", str(trained / "checkpoint_best.pt"), "--input", str(images),
                 "--out", str(masks), "--device", "cpu"]) == 0
    a = np.array(Image.open(masks / "a_mask.png"))
    assert a.shape == (40, 52) and set(np.unique(a)) <= {0, 255}  # the image's own size, ISIC values
    assert np.array(Image.open(masks / "b_mask.png")).shape == (30, 30)
    assert np.array(Image.open(masks / "a_uncertainty.png")).shape == (40, 52, 3)


def test_resume_continues_where_it_stopped(tmp_path, capsys):
    out = str(tmp_path / "run")
    assert main(["train", *TINY, "--uafr", "--epochs", "3", "--max-steps", "1", "--out", out]) == 0
    first = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert first["steps"] == 1 and len(first["epochs"]) == 1
    assert main(["train", "--resume", "--max-steps", "3", "--out", out]) == 0
    assert "resumed from" in capsys.readouterr().out
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["steps"] == 3 and [e["epoch"] for e in summary["epochs"]] == [0, 1]
    assert summary["epochs"][0] == first["epochs"][0]  # the first epoch is kept, not redone
    assert summary["config"]["uafr"] and summary["config"]["max_steps"] == 3


def _folder(root, *, masks=True, mask_size=None, values=(0, 255)):
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    rng = np.random.default_rng(1)
    for i in range(4):
        Image.fromarray((rng.random((24, 24)) * 255).astype(np.uint8)).save(root / "images" / f"x{i}.png")
        if masks:
            m = rng.choice(values, size=mask_size or (24, 24)).astype(np.uint8)
            Image.fromarray(m).save(root / "masks" / f"x{i}.png")
    return f"folder:{root}"


@pytest.mark.parametrize("case,match", [
    ("missing folder", "no such folder"),
    ("images without masks", "mask"),
    ("masks of another size", "is 24x20 but its image"),
    ("labels >= classes", "class"),
    ("unknown model", "unknown model"),
    ("bad setting", "--fraction"),
    ("resume nothing", "--resume"),
])
def test_bad_input_is_one_line_and_exit_2(case, match, tmp_path, capsys):
    args = ["train", *TINY, "--max-steps", "1", "--out", str(tmp_path / "out")]
    if case == "missing folder":
        args += ["--data", f"folder:{tmp_path / 'nowhere'}"]
    elif case == "images without masks":
        args += ["--data", _folder(tmp_path / "f", masks=False)]
    elif case == "masks of another size":
        args += ["--data", _folder(tmp_path / "f", mask_size=(20, 24))]
    elif case == "labels >= classes":
        args += ["--data", _folder(tmp_path / "f", values=(0, 1, 2)), "--num-classes", "2"]
    elif case == "unknown model":
        args += ["--model", "segformer"]
    elif case == "bad setting":
        args += ["--fraction", "1.5"]
    elif case == "resume nothing":
        args += ["--resume"]
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "Traceback" not in err and err.startswith("pdcr-seg train: error:")
    assert match.lower() in err.lower(), err


def test_config_file_and_command_line(tmp_path):
    from pdcr_seg.cli import parser, train_config

    config = tmp_path / "c.yaml"
    config.write_text("model: fcn\nepochs: 7\npdcr: true\npdcr-weight: 0.5\n")
    cfg = train_config(parser().parse_args(["train", "--config", str(config), "--epochs", "3"]))
    assert (cfg.model, cfg.epochs, cfg.pdcr, cfg.pdcr_weight) == ("fcn", 3, True, 0.5)
    config.write_text("modle: fcn\n")
    with pytest.raises(ValueError, match="unknown setting"):
        train_config(parser().parse_args(["train", "--config", str(config)]))


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
