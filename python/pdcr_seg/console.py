"""The `pdcr-seg` console entry: checks for the `seg` extra, then runs pdcr_seg.cli.main.

pdcr_seg.cli imports its configuration (PyYAML) and, through its commands, MONAI and the image
libraries when it is loaded, so a plain `pip install pdcr_ext` (without the extra) would end in a
ModuleNotFoundError traceback. The check runs first, before any of them is imported, and says in
one line what to install.
"""

from __future__ import annotations

import importlib.util
import sys

# The `seg` extra of pyproject.toml as import names (distribution -> module where they differ);
# tests/test_environment.py checks that this list and the extra agree.
SEG_EXTRA_MODULES = {
    "monai": "monai",
    "scipy": "scipy",
    "tifffile": "tifffile",
    "pillow": "PIL",
    "nibabel": "nibabel",
    "matplotlib": "matplotlib",
    "pyyaml": "yaml",
    "tqdm": "tqdm",
    "pydicom": "pydicom",  # --data lung-ct reads DICOM
    "scikit-image": "skimage",  # and rasterises its contours
}
INSTALL_HINT = 'pip install "pdcr_ext[seg]"'


def missing_seg_modules() -> list[str]:
    """Distributions of the `seg` extra that cannot be imported here (found without importing)."""
    return [dist for dist, module in SEG_EXTRA_MODULES.items() if importlib.util.find_spec(module) is None]


def main(argv=None) -> int:
    missing = missing_seg_modules()
    if missing:
        print(f"pdcr-seg needs the seg extra (missing: {', '.join(missing)}): {INSTALL_HINT}",
              file=sys.stderr)
        return 2
    from .cli import main as cli_main

    return cli_main(argv)


if __name__ == "__main__":
    sys.exit(main())
