"""Make data/cifar10-mini.npz: a class-balanced, seeded subset of the full CIFAR-10 npz.

    python scripts/make_mini.py [FULL_NPZ] [OUT]   (defaults: data/cifar10.npz, data/cifar10-mini.npz)

200 training and 100 test images per class (2,000 / 1,000), picked by a seeded permutation, kept in
the full set's order. The output is byte-reproducible; it prints the file and content digests that
dtlib.data.DIGESTS['mini'] pins.
"""
import sys
import zipfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from dtlib.data import balanced_indices, content_digest, file_digest, load_arrays  # noqa: E402
from dtlib.io import atomic_path  # noqa: E402

SEED, TRAIN_PER_CLASS, TEST_PER_CLASS = 2020, 200, 100


def main(src: str = "data/cifar10.npz", out: str = "data/cifar10-mini.npz") -> None:
    src = Path(src)
    full = load_arrays("full", src.parent) if src.name == "cifar10.npz" else dict(np.load(src))
    tr = balanced_indices(full["y_train"], TRAIN_PER_CLASS, SEED)
    te = balanced_indices(full["y_test"], TEST_PER_CLASS, SEED + 1)
    mini = {"x_train": full["x_train"][tr], "y_train": full["y_train"][tr].astype(np.int64),
            "x_test": full["x_test"][te], "y_test": full["y_test"][te].astype(np.int64)}
    # An npz is a zip of .npy files; written by hand with LZMA (17% smaller than savez_compressed)
    # and a fixed timestamp, so the same arrays always give the same bytes.
    with atomic_path(out) as tmp, zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_LZMA) as z:
        for name, array in mini.items():
            info = zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_LZMA
            with z.open(info, "w") as f:
                np.lib.format.write_array(f, array, allow_pickle=False)
    print(f"wrote {out}: {len(tr)} train / {len(te)} test images; "
          f"file sha256 {file_digest(Path(out))}; content digest {content_digest(mini)}")


if __name__ == "__main__":
    main(*sys.argv[1:])
