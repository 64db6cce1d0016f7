"""Every bad input of pdcr-seg: one line on stderr, exit status 2, never a traceback, and an earlier
run left exactly as it was. One table; each row runs the command line in its own process (forked
from a server that has imported torch and MONAI once: tests/seg_fork_server.py), and one row also
through a fresh `python -m pdcr_seg`."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from pdcr_seg.cli import main

TINY = ["--data", "synthetic", "--fraction", "0.1", "--model", "unet", "--width", "4", "--image-size", "32",
        "--batch-size", "4", "--overlays", "1", "--device", "cpu", "--epochs", "1", "--max-steps", "1"]
NO_GPU = not torch.cuda.is_available()

# (case, command line, words the one-line message must hold). {name} is a path made by `inputs`.
CASES = [
    # settings, refused before anything is read
    ("unknown model, --overwrite of a finished run", ["train", *TINY, "--model", "unett", "--out", "{run}",
                                                      "--overwrite"], ["unknown model", "did you mean unet"]),
    ("unknown model is checked before any image is read", ["train", *TINY, "--model", "unett", "--data",
                                                           "folder:{corrupt}", "--out", "{new}"], ["unknown model"]),
    ("2-D model for volumes", ["train", *TINY, "--dims", "3", "--model", "fcn", "--out", "{new}"], ["2-D model"]),
    ("--device cuda without a GPU" if NO_GPU else "--device cuda:99",
     ["train", *TINY, "--device", "cuda" if NO_GPU else "cuda:99", "--out", "{new}"], ["--device cuda"]),
    ("--device tpu", ["train", *TINY, "--device", "tpu", "--out", "{new}"], ["--device tpu", "expected"]),
    ("--seed -1", ["train", *TINY, "--seed", "-1", "--out", "{new}"], ["--seed", "-1"]),
    ("--seed 2^32", ["train", *TINY, "--seed", str(2**32), "--out", "{new}"], ["--seed"]),
    ("--pdcr-weight nan", ["train", *TINY, "--pdcr", "--pdcr-weight", "nan", "--out", "{new}"],
     ["--pdcr-weight", "nan"]),
    ("--pdcr-weight -5", ["train", *TINY, "--pdcr", "--pdcr-weight", "-5", "--out", "{new}"], ["--pdcr-weight", "-5"]),
    ("--lr inf", ["train", *TINY, "--lr", "inf", "--out", "{new}"], ["--lr"]),
    ("--fraction 1.5", ["train", *TINY, "--fraction", "1.5", "--out", "{new}"], ["--fraction"]),
    ("--width 0", ["train", *TINY, "--width", "0", "--out", "{new}"], ["--width"]),
    ("--dice-loss with --ignore-index", ["train", *TINY, "--dice-loss", "--ignore-index", "255", "--out", "{new}"],
     ["--dice-loss", "--ignore-index"]),
    ("--image-size 17 --model fcn", ["train", *TINY, "--model", "fcn", "--image-size", "17", "--out", "{new}"],
     ["--image-size 17", "fcn", "32 works"]),
    ("--batch-size 1 with BatchNorm", ["train", *TINY, "--model", "deeplabv3plus", "--batch-size", "1",
                                       "--out", "{new}"], ["--batch-size 1", "batchnorm"]),
    # config files
    ("YAML: a string for a bool", ["train", "--config", "{yaml_bool}", "--out", "{new}"], ["pdcr", "true or false"]),
    ("YAML: a string for a list", ["train", "--config", "{yaml_list}", "--out", "{new}"], ["pdcr_layers", "a list"]),
    ("YAML: a word for a number", ["train", "--config", "{yaml_int}", "--out", "{new}"], ["epochs", "integer"]),
    ("YAML: an unknown key", ["train", "--config", "{yaml_unknown}", "--out", "{new}"], ["unknown setting", "modle"]),
    # run folders
    ("a new run into a finished one", ["train", *TINY, "--out", "{run}"], ["not empty", "--overwrite"]),
    ("--out is a file", ["train", *TINY, "--out", "{file}"], ["is a file"]),
    ("--resume without --out", ["train", "--resume"], ["--resume needs --out"]),
    ("--resume of nothing", ["train", "--resume", "--out", "{new}"], ["--resume", "no run"]),
    ("--resume and --overwrite", ["train", "--resume", "--overwrite", "--out", "{run}"], ["contradict"]),
    ("--resume with another --width", ["train", "--resume", "--width", "16", "--out", "{run}"],
     ["--width 16", "differs", "4"]),
    ("--resume with another --data", ["train", "--resume", "--data", "nuclei", "--out", "{run}"], ["--data nuclei"]),
    # data
    ("missing folder", ["train", *TINY, "--data", "folder:{nowhere}", "--out", "{new}"], ["no such folder"]),
    ("images without masks", ["train", *TINY, "--data", "folder:{no_masks}", "--out", "{new}"], ["no mask"]),
    ("masks of another size", ["train", *TINY, "--data", "folder:{mask_size}", "--out", "{new}"],
     ["is 24x20 but its image"]),
    ("label values >= classes", ["train", *TINY, "--data", "folder:{three_classes}", "--num-classes", "2",
                                 "--out", "{new}"], ["label value 2", "num_classes=2"]),
    ("JPEG masks with --num-classes 256", ["train", *TINY, "--data", "folder:{jpeg_masks}", "--num-classes", "256",
                                           "--out", "{new}"], ["near-binary", "num_classes=256"]),
    ("DeepLabV3+ on a split of one image", ["train", *TINY, "--model", "deeplabv3plus", "--data", "folder:{one_train}",
                                            "--out", "{new}"], ["1 image", "batchnorm"]),
    # eval and predict
    ("eval: missing checkpoint", ["eval", "--checkpoint", "{nowhere}", "--out", "{new}"], ["does not exist"]),
    ("eval: --out holds files", ["eval", "--checkpoint", "{run}/checkpoint_best.pt", "--out", "{run}"],
     ["not empty"]),
    ("predict: --out is a file", ["predict", "--checkpoint", "{run}/checkpoint_best.pt", "--input", "{images}",
                                  "--out", "{file}"], ["is a file"]),
    ("predict: --out holds files", ["predict", "--checkpoint", "{run}/checkpoint_best.pt", "--input", "{images}",
                                    "--out", "{run}"], ["not empty"]),
    ("predict: missing input", ["predict", "--checkpoint", "{run}/checkpoint_best.pt", "--input", "{nowhere}",
                                "--out", "{new}"], ["does not exist"]),
    ("predict: --device tpu", ["predict", "--checkpoint", "{run}/checkpoint_best.pt", "--input", "{images}",
                               "--device", "tpu", "--out", "{new}"], ["--device tpu"]),
]


def _save(path: Path, array: np.ndarray, **options) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path, **options)


def _pairs(root: Path, n: int = 4, *, values=(0, 255), mask_size=None, masks=True, mask_ext="png") -> Path:
    rng = np.random.default_rng(1)
    for i in range(n):
        _save(root / "images" / f"x{i}.png", (rng.random((24, 24)) * 255).astype(np.uint8))
        if masks:
            m = rng.choice(values, size=mask_size or (24, 24)).astype(np.uint8)
            _save(root / "masks" / f"x{i}.{mask_ext}", m, **({"quality": 75} if mask_ext == "jpg" else {}))
    return root


def inputs(root: Path) -> dict[str, str]:
    """Every path the table names, created under `root` (the finished run is trained here)."""
    run = root / "run"
    assert main(["train", *TINY, "--out", str(run)]) == 0
    paths = {"run": run, "nowhere": root / "nowhere", "file": root / "a_file.txt"}
    paths["file"].write_text("not a folder")
    _save(root / "corrupt" / "images" / "x0.png", np.zeros((24, 24), np.uint8))
    (root / "corrupt" / "images" / "x1.png").write_bytes(b"not a png")
    _save(root / "corrupt" / "masks" / "x0.png", np.zeros((24, 24), np.uint8))
    paths["corrupt"] = root / "corrupt"
    paths["no_masks"] = _pairs(root / "no_masks", masks=False)
    (root / "no_masks" / "masks").mkdir()
    paths["mask_size"] = _pairs(root / "mask_size", mask_size=(20, 24))
    paths["three_classes"] = _pairs(root / "three_classes", values=(0, 1, 2))
    jpeg = root / "jpeg_masks"
    for i in range(4):
        mask = np.zeros((48, 48), np.uint8)
        mask[10:30, 12:40] = 255
        _save(jpeg / "images" / f"k{i}.jpg", np.random.default_rng(i).integers(0, 255, (48, 48, 3), dtype=np.uint8))
        _save(jpeg / "masks" / f"k{i}.jpg", mask, quality=70)
    paths["jpeg_masks"] = jpeg
    for split in ("train", "val", "test"):
        _pairs(root / "one_train" / split, n=1, values=(0, 255))
    paths["one_train"] = root / "one_train"
    for name, text in (("yaml_bool", 'pdcr: "no"\n'), ("yaml_list", "pdcr_layers: enc2\n"),
                       ("yaml_int", "epochs: three\n"), ("yaml_unknown", "modle: fcn\n")):
        paths[name] = root / f"{name}.yaml"
        paths[name].write_text(text)
    paths["images"] = _pairs(root / "predict_in", masks=False) / "images"
    return {name: str(path) for name, path in paths.items()}


def _fingerprint(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def fork_server():
    """tests/seg_fork_server.py in a fresh interpreter (see there why not a fork of pytest itself)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("PDCR_SEG_TRACEBACK", None)
    server = subprocess.Popen([sys.executable, str(Path(__file__).with_name("seg_fork_server.py"))],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)
    yield server
    server.stdin.close()
    server.wait(timeout=60)


def _run(server: subprocess.Popen, argv: list[str], cwd: Path) -> tuple[int, str, str]:
    """Runs `pdcr-seg ARGV` in a child of the fork server; returns its exit status, stdout and stderr.
    The child does what `python -m pdcr_seg` does: main(), sys.exit's status, and for an uncaught
    exception the interpreter's traceback and status 1."""
    out, err = cwd / "case_stdout.txt", cwd / "case_stderr.txt"
    request = {"argv": argv, "cwd": str(cwd), "stdout": str(out), "stderr": str(err)}
    server.stdin.write(json.dumps(request) + "\n")
    server.stdin.flush()
    answer = server.stdout.readline()
    assert answer, f"the fork server ended (status {server.poll()})"
    code = int(answer)
    texts = out.read_text(), err.read_text()
    out.unlink()
    err.unlink()
    return (code, *texts)


def _check(server, case, paths: dict, cwd: Path) -> str | None:
    """None if the case behaves, else what went wrong. {new} is a folder of the case's own."""
    name, argv, words = case
    new = cwd / f"new_{CASES.index(case)}"
    argv = [a.format(**paths, new=new) for a in argv]
    code, out, err = _run(server, argv, cwd)
    err = err.strip()
    problems = []
    if code != 2:
        problems.append(f"exit {code}")
    if "Traceback" in err + out:
        problems.append("a traceback")
    if len(err.splitlines()) != 1 or not err.startswith(f"pdcr-seg {argv[0]}: error: "):
        problems.append("not one 'pdcr-seg CMD: error:' line")
    missing = [w for w in words if w.lower() not in err.lower()]
    if missing:
        problems.append(f"no {missing}")
    if new.exists():
        problems.append(f"created {new}")
    return f"{name}: {', '.join(problems)}\n    stderr: {err[-600:]}" if problems else None


@pytest.mark.slow
@pytest.mark.usefixtures("one_thread")
def test_every_bad_input_is_one_line_and_exit_2(tmp_path, fork_server):
    paths = inputs(tmp_path)
    run = Path(paths["run"])
    before = _fingerprint(run)
    failures = [f for f in (_check(fork_server, case, paths, tmp_path) for case in CASES) if f]
    assert not failures, f"{len(failures)} of {len(CASES)} cases misbehave:\n" + "\n".join(failures)
    assert _fingerprint(run) == before, "a refused command changed the earlier run"
    # and the real entry point, in a fresh interpreter: `python -m pdcr_seg`
    env = {k: v for k, v in os.environ.items() if k != "PDCR_SEG_TRACEBACK"}
    done = subprocess.run([sys.executable, "-m", "pdcr_seg", "train", "--seed", "-1", "--out", "new"],
                          capture_output=True, text=True, timeout=120, cwd=tmp_path, env=env)
    assert (done.returncode, done.stderr.count("\n")) == (2, 1) and "--seed" in done.stderr, done.stderr
