"""The docs' pictures of data.resize_mode: a real photo that scikit-learn ships
(china.jpg, 640x427) read as an image folder reads it, at 128 px, in the three modes.

Run: .venv/bin/python bench/readme_pictures.py [--out docs/images]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def resize_modes(out: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.datasets import load_sample_images

    from dltrain.data import images

    photo = next(name for name in load_sample_images().filenames if name.endswith("china.jpg"))
    fig, axes = plt.subplots(1, 3, figsize=(7.5, 2.9))
    for ax, mode in zip(axes, ("crop", "squash", "pad"), strict=True):
        pixels = images.read(photo, images.Look(128, mode, 3)).permute(1, 2, 0).numpy()
        ax.imshow(pixels)
        ax.set_title(f"resize_mode: {mode}", fontsize=10)
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle("a 640x427 photo at data.resize: 128", fontsize=10)
    fig.tight_layout()
    path = out / "resize-modes.png"
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "images")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    print(f"wrote {resize_modes(args.out)}")


if __name__ == "__main__":
    main()
