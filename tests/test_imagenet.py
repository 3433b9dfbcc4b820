"""data=imagenet on a tiny ImageFolder of JPEGs the tests write: scanning and its errors, the
training and evaluation views, the streaming loader's order, sharding and resumption, and a DT run
of ResNet-50 through a training epoch, the attack suite and its evaluation, at a reduced image
size; the full 224-pixel path for shapes."""
import math

import numpy as np
from pathlib import Path

import pytest
import torch
from PIL import Image
from torchvision.transforms import v2

from dtlib.config import Config
from dtlib.data import DataError, Loader, in_memory, load_data, make_loader, split_train
from dtlib.evaluate import fit_indices, scored_choice, scored_subset
from dtlib import validation
from dtlib.experiment import ensure_trained, load_model, run, run_dir_for
from dtlib.imagenet import FolderSplit, StreamLoader, crop_box, eval_view, load_imagenet, scan
from dtlib.images import Split, balanced_indices
from dtlib.imagenet import NATIVE_SIZE
from dtlib.study import setup
from dtlib.models import build_model
from dtlib.suite import Suite, attack_model

CLASSES = ("n01440764", "n01443537", "n01484850")


def write_folder(root: Path, per_class: dict[str, int], seed: int = 0) -> Path:
    """``root/<part>/<class>/<i>.JPEG`` of random sizes (a grey one and a PNG among them)."""
    g = torch.Generator().manual_seed(seed)
    for part, n in per_class.items():
        for c, name in enumerate(CLASSES):
            (root / part / name).mkdir(parents=True, exist_ok=True)
            for i in range(n):
                h, w = (int(v) for v in torch.randint(36, 80, (2,), generator=g))
                img = (torch.rand(h, w, 3, generator=g) * 200 + 25 * c).to(torch.uint8).numpy()
                pil = Image.fromarray(img[..., 0] if i == 1 else img)
                pil.save(root / part / name / f"{part}_{i}.{'png' if i == 2 else 'JPEG'}", "PNG" if i == 2 else "JPEG")
    return root


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    return write_folder(tmp_path_factory.mktemp("imagenet"), {"train": 12, "val": 4})


def test_scan_reads_classes_from_the_folders(folder):
    names, paths, y = scan(folder / "train")
    assert names == list(CLASSES) and len(paths) == 36
    assert y.tolist() == [c for c in range(3) for _ in range(12)]
    assert all(Path(p).parent.name == CLASSES[int(c)] for p, c in zip(paths, y))
    d = load_imagenet(folder, image_size=40)
    assert (d["train"].classes, len(d["test"]), d["test"].size) == (3, 12, 40)


@pytest.mark.parametrize("breakage, needle", [
    (lambda r: (r / "train").rename(r / "training"), "train is not a folder"),
    (lambda r: [p.unlink() for p in (r / "val" / CLASSES[1]).iterdir()], "holds no images"),
    (lambda r: (r / "val" / CLASSES[2]).rename(r / "val" / "n99999999"), "differ from those of train/"),
    (lambda r: [(r / "train" / c).rename(r / "train" / c / ".." / ".." / c) for c in CLASSES], "holds no class folders"),
])
def test_a_missing_or_malformed_folder_is_refused_in_one_sentence(tmp_path, breakage, needle):
    root = write_folder(tmp_path / "d", {"train": 2, "val": 1})
    breakage(root)
    with pytest.raises(DataError) as e:
        load_imagenet(root)
    text = str(e.value)
    assert needle in text and "\n" not in text and text.endswith(".") and ". " not in text, text


@pytest.mark.parametrize("workers", [0, 2])
def test_an_unreadable_image_is_named_in_one_sentence(tmp_path, workers):
    root = write_folder(tmp_path / "d", {"train": 2, "val": 1})
    bad = root / "val" / CLASSES[0] / "val_0.JPEG"
    bad.write_bytes(b"not a jpeg")
    test = load_imagenet(root, image_size=32, workers=workers)["test"]
    with pytest.raises(DataError) as e:
        test.decode()
    assert str(e.value) == f"{bad} is not a readable image (UnidentifiedImageError); replace or remove it."
    with pytest.raises(DataError, match="is not a readable image"):
        list(test.loader(3, train=True))


def test_crop_boxes_follow_random_resized_crop():
    g = torch.Generator().manual_seed(0)
    for h, w in [(60, 80), (300, 200), (50, 400), (37, 37)]:
        for _ in range(200):
            top, left, ch, cw = crop_box(h, w, g)
            assert 0 <= top and top + ch <= h and 0 <= left and left + cw <= w
            if (ch, cw) != (h, w) and top + left:  # a drawn box, not the centre fallback
                assert 0.08 * h * w * 0.9 <= ch * cw <= h * w and 3 / 4 * 0.9 <= cw / ch <= 4 / 3 * 1.1


def test_the_evaluation_view_is_torchvisions_resize_256_and_centre_crop_224():
    img = (torch.rand(3, 300, 451, generator=torch.Generator().manual_seed(1)) * 255).to(torch.uint8)
    want = v2.Compose([v2.Resize(256, antialias=True), v2.CenterCrop(224)])(img)
    assert torch.equal(eval_view(img, 224), want)
    assert eval_view(img, 64).shape == (3, 64, 64)


def test_the_stream_loader_shards_orders_and_resumes_as_the_memory_loader(folder):
    train = load_imagenet(folder, image_size=32)["train"]
    first = StreamLoader(train, 5, seed=3)
    first.set_epoch(2)
    batches = list(first.batches())
    assert len(batches) == len(first) == 7 and all(x.shape == (5, 3, 32, 32) for x, _ in batches)
    assert all(x.dtype == torch.float32 and 0 <= x.min() and x.max() <= 1 for x, _ in batches)
    # the labels follow Loader's order (DistributedSampler's), and a resumed epoch gives the same pixels
    memory = Loader(in_memory(train), 5, seed=3)
    memory.set_epoch(2)
    assert torch.equal(torch.cat([y for _, y in batches]), torch.cat([y for _, y in memory.batches()]))
    for b, (x, y) in enumerate(first.batches(4), start=4):
        assert torch.equal(x, batches[b][0]) and torch.equal(y, batches[b][1])
    # worker processes decode the same pixels; another epoch crops differently
    workers = StreamLoader(train.__class__(**{**train.__dict__, "workers": 2}), 5, seed=3)
    workers.set_epoch(2)
    assert all(torch.equal(a[0], b[0]) for a, b in zip(workers.batches(), batches))
    first.set_epoch(3)
    assert not torch.equal(next(iter(first.batches()))[0], batches[0][0])
    # two ranks: disjoint shards that cover the epoch
    shards = [StreamLoader(train, 3, seed=3, rank=r, world_size=2) for r in range(2)]
    seen = [i for s in shards for i in s.indices().tolist()]
    assert sorted(seen) == list(range(36))


def test_splits_sizes_and_targets_follow_the_class_count(folder):
    cfg = Config(data="imagenet", data_dir=str(folder), image_size=32, val_size=6, train_size=24, workers=0)
    train, val, test = load_data(cfg)
    assert (len(train), len(val), len(test)) == (24, 6, 12)
    assert torch.bincount(val.y).tolist() == [2, 2, 2] and not set(train.paths) & set(val.paths)
    with pytest.raises(DataError, match="multiple of 3"):
        split_train(train, val_size=4)
    with pytest.raises(DataError, match="multiple of the 3 classes"):
        scored_subset(test, 10)
    scored = scored_subset(test, 6)
    assert scored.x.dtype == torch.uint8 and scored.x.shape == (6, 3, 32, 32) and scored.classes == 3


def test_imagenet_settings_are_refused_where_they_mean_nothing():
    for bad, needle in [(dict(image_size=64), "CIFAR-10's images are 32x32"), (dict(workers=2), "CIFAR-10 is held in memory"),
                        (dict(data="imagenet", backbone="vgg"), "32x32 images only"),
                        (dict(data="imagenet", image_size=8), "too small"),
                        (dict(data="imagenet", download=True), "CIFAR-10 only")]:
        with pytest.raises(ValueError, match=needle):
            Config(**bad)
    # an L2 radius is bounded by the image's own size; a CIFAR-10 run's key is as before image_size existed
    Config(data="imagenet", eval_norm="l2", eval_eps=100.0)
    with pytest.raises(ValueError, match="outside"):
        Config(eval_norm="l2", eval_eps=100.0)
    assert Config().train_hash("fp32") == Config(image_size=0).train_hash("fp32")


def test_a_dt_resnet50_trains_and_is_attacked_on_an_image_folder(folder, tmp_path):
    """The whole path at 32 x 32: a streamed training epoch, the suite's fits on decoded training
    images, the evaluation on decoded val/ images; the model has the data's classes and ImageNet's
    normalisation, and loads back from its checkpoint."""
    cfg = Config(data="imagenet", data_dir=str(folder), image_size=32, backbone="resnet50", heads=2, method="dt",
                 epochs=1, batch_size=6, workers=0, val_size=6, uap_fit_size=12, eval_size=9, uap_epochs=1,
                 uap_lr="0.25", uap_refine=0, eval_objectives="ensemble_ce", eval_labels="predicted",
                 eval_modes="ensemble", device="cpu", precision="fp32")
    result = run(cfg, runs_dir=tmp_path, progress=False, log=lambda s: None)
    row = result.metrics["eval"]["ensemble"]
    assert (row["n_fit"], row["n_test"]) == (12, 9) and 0 <= row["fooling_rate"] <= 1
    # which files were fitted on (training images outside the validation split) and scored (val/), recorded
    pool, _, test = load_data(cfg.replace(train_size=0))
    assert row["fit_files"] == pool.subset(fit_indices(len(pool), 12, cfg.seed)).listing()
    assert row["scored_files"] == scored_choice(test, 9).listing() != row["fit_files"]
    assert result.metrics["train"]["steps"] == 5  # 30 training images, batches of 6
    model, loaded = load_model(result.run_dir)
    assert loaded == cfg and model.num_classes == 3
    assert torch.allclose(model.normalize.mean.flatten(), torch.tensor([0.485, 0.456, 0.406]))
    x = torch.rand(2, 3, 32, 32)
    assert model(x).shape == (2, 2, 3)
    # a targeted evaluation names a class the data has
    with pytest.raises(ValueError, match=r"not a class of the data \(0..2\)"):
        run(cfg.replace(eval_target=5), runs_dir=tmp_path, progress=False, log=lambda s: None)


def test_the_224_pixel_path_has_the_shapes_of_imagenet(folder):
    """image_size=0 (224): streamed training crops, decoded evaluation images and one training step of a
    K-head ResNet-50 with 3 classes, all at 224 x 224."""
    cfg = Config(data="imagenet", data_dir=str(folder), backbone="resnet50", heads=2, device="cpu", precision="fp32",
                 workers=0)
    train, _, test = load_data(cfg)
    x, y = next(iter(make_loader(train.subset(torch.arange(0, 36, 12)), 2, train=True)))
    assert x.shape == (2, 3, 224, 224) and y.shape == (2,)
    assert in_memory(test.subset(torch.arange(2))).x.shape == (2, 3, 224, 224)
    torch.manual_seed(0)
    model = build_model(cfg, train.classes)
    assert model(x).shape == (2, 2, 3)
    loss = torch.nn.functional.cross_entropy(model(x).flatten(0, 1), y.repeat(2))
    loss.backward()
    assert math.isfinite(loss.item()) and model.weight.grad.shape == (2, 3, 2048)
    assert isinstance(train, FolderSplit)


def test_a_thousand_class_split_goes_through_the_suite():
    """Labels up to 999 (ImageNet's) stay valid through the suite's own copies of the splits."""
    g = torch.Generator().manual_seed(0)
    fit = Split(torch.rand(20, 3, 8, 8, generator=g), torch.arange(980, 1000), classes=1000)
    test = Split(torch.rand(10, 3, 8, 8, generator=g), torch.arange(990, 1000), classes=1000)
    with pytest.raises(DataError, match="outside 0..9"):
        Split(fit.x, fit.y)
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 8 * 8, 1000))
    suite = Suite.from_config(Config(uap_epochs=1, uap_lr="0.25", uap_refine=0, eval_objectives="ensemble_ce",
                                     eval_labels="true", uap_fit_size=20))
    found, won = attack_model(model, fit, test, suite, mode="single")
    assert 0 <= found["fooling_rate"] <= 1 and won["fooling"].shape == (1, 3, 8, 8)


def test_the_run_cache_tells_image_folders_apart(folder, tmp_path):
    """Another folder's images (same names, other files) train other weights: another key; image_size 224 is 0's."""
    other = write_folder(tmp_path / "other", {"train": 12, "val": 4}, seed=1)
    cfg = Config(data="imagenet", data_dir=str(folder), backbone="cnn")
    assert run_dir_for(cfg) != run_dir_for(cfg.replace(data_dir=str(other)))
    assert run_dir_for(cfg) == run_dir_for(cfg.replace(image_size=224)) != run_dir_for(cfg.replace(image_size=64))
    assert validation.NATIVE_SIDE == NATIVE_SIZE and validation.DEFAULT_WORKERS == Config().workers


def test_an_evaluation_the_data_cannot_take_is_refused_before_training(folder, tmp_path):
    cfg = Config(data="imagenet", data_dir=str(folder), image_size=32, backbone="cnn", epochs=1, batch_size=6,
                 workers=0, device="cpu")
    for bad, needle in [(dict(eval_size=7), "multiple of the 3 classes"), (dict(eval_target=3), "not a class of the data")]:
        with pytest.raises(ValueError, match=needle):
            ensure_trained(cfg.replace(**bad), runs_dir=tmp_path, progress=False, log=lambda s: None)
    assert not list(tmp_path.iterdir())  # nothing trained, nothing written


def test_the_imagenet_profile_sets_up():
    study = setup("imagenet")
    c = study.config
    assert (c.data, c.backbone, c.nproc, c.eval_eps, c.image_size) == ("imagenet", "resnet50", 8, 10 / 255, 0)
    assert 5 in study.ks and "vgg" not in study.transfer_backbones


def test_class_balanced_draws_take_each_class_in_the_permutations_order():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 50, 5000)
    exclude = rng.choice(5000, 300, replace=False)
    got = balanced_indices(labels, 4, seed=3, exclude=exclude, classes=50)
    order = np.random.default_rng(3).permutation(5000)
    order = order[~np.isin(order, exclude)]
    want = np.sort(np.concatenate([order[labels[order] == c][:4] for c in range(50)]))
    assert np.array_equal(got, want)
