from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DistributedSampler

from dtlib import Config
from dtlib.data import (DataError, Loader, Split, augment, check_arrays, content_digest,
                        fitting_pool, load_arrays, load_cifar10, load_data, split_train, to_float)
from dtlib.io import data_path

from conftest import DATA_DIR


def write_npz(path, arrays):
    np.savez(path, **arrays)


def test_mini_is_balanced_uint8_and_pinned(mini):
    tr, te = mini["train"], mini["test"]
    assert tr.x.shape == (2000, 3, 32, 32) and te.x.shape == (1000, 3, 32, 32)
    assert tr.x.dtype == torch.uint8 and tr.y.dtype == torch.int64
    assert torch.bincount(tr.y).tolist() == [200] * 10 and torch.bincount(te.y).tolist() == [100] * 10
    assert content_digest(load_arrays("mini", DATA_DIR)) == "3022d1d1e979a6ea64832ef983ea980a4ae4df3c53961a61bf7d064fe0f56e90"


def test_mini_is_made_reproducibly_from_the_full_set(tmp_path):
    """The committed script makes the committed file from any npz: here a fake 'full' set."""
    import importlib.util
    spec = importlib.util.spec_from_file_location("make_mini", DATA_DIR.parent / "scripts" / "make_mini.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    rng = np.random.default_rng(1)
    fake = {"x_train": rng.integers(0, 256, (3000, 32, 32, 3), dtype=np.uint8), "y_train": np.arange(3000) % 10,
            "x_test": rng.integers(0, 256, (1500, 32, 32, 3), dtype=np.uint8), "y_test": np.arange(1500) % 10}
    write_npz(tmp_path / "fake.npz", fake)
    mod.main(str(tmp_path / "fake.npz"), str(tmp_path / "a.npz"))
    mod.main(str(tmp_path / "fake.npz"), str(tmp_path / "b.npz"))
    assert (tmp_path / "a.npz").read_bytes() == (tmp_path / "b.npz").read_bytes()
    with np.load(tmp_path / "a.npz") as a:
        assert np.bincount(a["y_train"]).tolist() == [200] * 10 and np.bincount(a["y_test"]).tolist() == [100] * 10
        # every picked image is one of the source's, with its label
        src = {fake["x_train"][i].tobytes(): fake["y_train"][i] for i in range(3000)}
        assert all(src[a["x_train"][i].tobytes()] == a["y_train"][i] for i in range(0, 2000, 97))


def test_missing_full_set_says_where_to_put_it(tmp_path):
    with pytest.raises(DataError, match=r"not found in .*: put the CIFAR-10 npz .* at .*cifar10\.npz.*make data DOWNLOAD=1"):
        load_arrays("full", tmp_path)


def test_wrong_checksum_is_rejected(tmp_path, mini):
    a = load_arrays("mini", DATA_DIR)
    a["x_train"] = a["x_train"].copy()
    a["x_train"][0, 0, 0, 0] ^= 1  # one pixel changed: a different dataset
    write_npz(tmp_path / "cifar10-mini.npz", a)
    with pytest.raises(DataError, match="fails its sha256 check"):
        load_arrays("mini", tmp_path)


def test_a_file_read_once_is_not_trusted_after_it_changes(tmp_path):
    """The verified arrays are kept per process, read-only; a file rewritten in place is read and
    checked again, so a corrupted copy is refused even after its intact version was loaded."""
    blob = (DATA_DIR / "cifar10-mini.npz").read_bytes()
    path = tmp_path / "cifar10-mini.npz"
    path.write_bytes(blob)
    a = load_arrays("mini", tmp_path)
    assert load_arrays("mini", tmp_path)["x_train"] is a["x_train"]  # kept, not read again
    with pytest.raises(ValueError, match="read-only"):
        a["x_train"][0, 0, 0, 0] = 1
    assert load_cifar10("mini", tmp_path)["train"].x.sum() == torch.from_numpy(a["x_train"].astype(np.int64)).sum()
    path.write_bytes(blob[: len(blob) // 2])
    with pytest.raises(DataError, match="not a readable npz"):
        load_arrays("mini", tmp_path)


def test_truncated_file_is_rejected(tmp_path):
    blob = (DATA_DIR / "cifar10-mini.npz").read_bytes()
    (tmp_path / "cifar10-mini.npz").write_bytes(blob[: len(blob) // 2])
    with pytest.raises(DataError, match="not a readable npz"):
        load_arrays("mini", tmp_path)


@pytest.mark.parametrize("key,value,message", [
    ("x_train", np.zeros((4, 32, 32), np.uint8), "x_train has shape"),
    ("x_test", np.zeros((4, 32, 32, 3), np.float32), "x_test has shape .* dtype float32"),
    ("y_train", np.full(4, 10), "label 10, outside 0..9"),
    ("y_test", np.full(4, -1), "label -1, outside 0..9"),
])
def test_malformed_arrays_are_named(key, value, message):
    good = {"x_train": np.zeros((4, 32, 32, 3), np.uint8), "y_train": np.zeros(4, np.int64),
            "x_test": np.zeros((4, 32, 32, 3), np.uint8), "y_test": np.zeros(4, np.int64)}
    with pytest.raises(DataError, match=message):
        check_arrays({**good, key: value}, "f.npz")


def test_corrupt_torchvision_folder_is_reported(tmp_path):
    (tmp_path / "cifar-10-batches-py").mkdir()
    (tmp_path / "cifar-10-batches-py" / "data_batch_1").write_bytes(b"junk")
    with pytest.raises(DataError, match="torchvision CIFAR-10 folder .* missing or corrupt"):
        load_arrays("full", tmp_path)


def test_split_train_is_balanced_disjoint_and_fixed(mini):
    tr, va = split_train(mini["train"], train_size=500, val_size=200, seed=0)
    assert len(tr) == 500 and len(va) == 200
    assert torch.bincount(tr.y).tolist() == [50] * 10 and torch.bincount(va.y).tolist() == [20] * 10
    key = lambda s: {bytes(x.numpy().tobytes()) for x in s.x}
    assert not key(tr) & key(va)
    tr2, va2 = split_train(mini["train"], train_size=500, val_size=200, seed=0)
    assert torch.equal(tr.x, tr2.x) and torch.equal(va.y, va2.y)
    full_tr, none = split_train(mini["train"], val_size=100)
    assert len(full_tr) == 1900 and len(none) == 100
    with pytest.raises(DataError, match="multiple of 10"):
        split_train(mini["train"], train_size=55)


def test_uaps_are_fitted_on_every_training_image_outside_validation_whatever_train_size():
    cfg = Config(data="mini", data_dir=str(DATA_DIR), train_size=300, val_size=200)
    train, val, _ = load_data(cfg)
    pool = fitting_pool(cfg)
    key = lambda s: {bytes(x.numpy().tobytes()) for x in s.x}
    assert len(pool) == 2000 - 200  # the mini set's 2,000 training images less validation
    assert key(train) <= key(pool) and not key(val) & key(pool)
    assert torch.equal(fitting_pool(cfg.replace(train_size=0)).x, pool.x)


def test_augment_is_a_padded_crop_and_flip_of_each_image():
    x = torch.rand(64, 3, 32, 32)
    out = augment(x, torch.Generator().manual_seed(0), pad=4)
    padded = torch.nn.functional.pad(x, (4, 4, 4, 4))
    flips = 0
    for n in range(64):
        windows = [(padded[n, :, i:i + 32, j:j + 32], False) for i in range(9) for j in range(9)]
        windows += [(w.flip(-1), True) for w, _ in windows]
        hit = [f for w, f in windows if torch.equal(w, out[n])]
        assert hit, f"image {n} is not a crop/flip of its padded original"
        flips += hit[0]
    assert 16 < flips < 48  # about half flipped
    again = augment(x, torch.Generator().manual_seed(0), pad=4)
    assert torch.equal(out, again)


def test_loader_yields_float_pixels_and_full_batches(mini):
    loader = Loader(mini["train"], 128, train=True, seed=3)
    batches = list(loader)
    assert len(batches) == len(loader) == 2000 // 128
    x, y = batches[0]
    assert x.dtype == torch.float32 and 0 <= x.min() and x.max() <= 1 and x.shape == (128, 3, 32, 32)
    test_loader = Loader(mini["test"], 300, train=False)
    assert sum(len(y) for _, y in test_loader) == 1000  # evaluation keeps the last partial batch
    assert torch.equal(next(iter(test_loader))[0], mini["test"].x[:300].float() / 255)


@pytest.mark.parametrize("world_size", [1, 2, 3])
def test_loader_shards_exactly_like_distributed_sampler(world_size):
    n, seed = 103, 5
    split = Split(torch.zeros(n, 3, 32, 32, dtype=torch.uint8), torch.arange(n) % 10)
    for epoch in (0, 1):
        union = []
        for rank in range(world_size):
            ours = Loader(split, 8, seed=seed, rank=rank, world_size=world_size)
            theirs = DistributedSampler(range(n), num_replicas=world_size, rank=rank, shuffle=True, seed=seed)
            ours.set_epoch(epoch)
            theirs.set_epoch(epoch)
            assert ours.indices().tolist() == list(theirs)
            union += ours.indices().tolist()
        assert set(union) == set(range(n))


def test_loader_takes_the_epochs_augmentation_draws_at_once_but_as_each_batch_would(mini):
    # the committed results were trained with one draw per batch: drawing the epoch's up front (one
    # host-to-device copy per epoch) must give the very same images
    loader = Loader(mini["train"], 100, train=True, seed=5)
    loader.set_epoch(2)
    g = torch.Generator().manual_seed((5 << 32) + (2 << 12) + 0xA06)
    idx = loader.indices()
    for b, (x, y) in enumerate(loader):
        sel = idx[b * 100:(b + 1) * 100]
        assert torch.equal(x, augment(to_float(mini["train"].x[sel]), g))
        assert torch.equal(y, mini["train"].y[sel])


def test_a_relative_data_dir_is_read_from_the_project_folder_and_kept_as_given(monkeypatch, tmp_path):
    """Notebooks run in notebooks/, the CLI wherever it is started: both find data/ of the project,
    and configs (hence every results JSON) keep "data", never this machine's absolute path."""
    project = Path(__file__).resolve().parent.parent
    monkeypatch.chdir(project / "notebooks")
    assert data_path("data") == project / "data"
    assert load_cifar10("mini", "data")["train"].x.shape[0] == 2000
    assert data_path(tmp_path) == tmp_path
    assert Config(data_dir="data").data_dir == "data"
