
import pytest
import torch
import torch.nn as nn
import torchvision
from torch.utils.flop_counter import FlopCounterMode

from dtlib import Config, build_model, load_model
from dtlib.checkpoint import CHECKPOINT, load_verified
from dtlib.data import file_digest
from dtlib.experiment import ensure_trained
from dtlib.data import MEAN, STD
from dtlib.models import Classifier, count_parameters

from conftest import MINI


def make(**kw):
    torch.manual_seed(0)
    return build_model(Config(**kw))


def test_compact_cnn_is_about_a_third_of_a_million_parameters():
    assert 250_000 <= count_parameters(make(backbone="cnn")) <= 350_000


def test_resnet18_has_the_cifar_stem_and_no_maxpool():
    m = make(backbone="resnet18")
    conv1 = m.backbone[0][0]
    assert conv1.kernel_size == (3, 3) and conv1.stride == (1, 1)
    assert not any(isinstance(x, nn.MaxPool2d) for x in m.modules())
    assert m.weight.shape[-1] == 512
    assert 11_000_000 < count_parameters(m) < 11_300_000


def test_resnet50_is_torchvisions_with_k_heads_on_its_2048_features():
    m = make(backbone="resnet50", heads=3).eval()
    conv1 = m.backbone[0][0]
    assert conv1.kernel_size == (7, 7) and conv1.stride == (2, 2)  # the ImageNet stem, max-pool after it
    assert isinstance(m.backbone[0][3], nn.MaxPool2d)
    assert m.weight.shape == (3, 10, 2048)
    body = count_parameters(m) - m.weight.numel() - m.bias.numel()
    assert body == count_parameters(torchvision.models.resnet50()) - 1000 * 2049  # all but its fc
    with torch.no_grad():
        assert m(torch.rand(1, 3, 224, 224)).shape == (3, 1, 10)  # the full ImageNet size
        assert m.features(torch.rand(2, 3, 64, 64)).shape == (2, 2048)


def test_resnet50_starts_from_a_local_file_of_torchvision_weights(tmp_path):
    torch.manual_seed(1)
    tv = torchvision.models.resnet50()  # 1000 classes: its fc is not ours and is left out
    torch.save(tv.state_dict(), tmp_path / "r50.pth")
    m = make(backbone="resnet50", heads=2, pretrained=str(tmp_path / "r50.pth"))
    assert torch.equal(m.backbone[0][0].weight, tv.conv1.weight)
    assert torch.equal(m.backbone[4][2].bn3.running_var, tv.layer4[2].bn3.running_var)
    assert torch.equal(m.weight, make(backbone="resnet50", heads=2).weight)  # the heads as without it
    torch.save({"conv1.weight": torch.zeros(1)}, tmp_path / "other.pth")
    (tmp_path / "bad.pth").write_bytes(b"not a checkpoint")
    (tmp_path / "folder").mkdir()
    for name, message in (("none.pth", r"no such file"), ("bad.pth", r"is not a readable torch state dict"),
                          ("other.pth", r"does not fit torchvision's ResNet-50"), ("folder", r"cannot be read")):
        with pytest.raises(ValueError, match=rf"^pretrained='[^']*{name}'[:]? {message}(?:(?!\. ).)*\.$"):
            make(backbone="resnet50", pretrained=str(tmp_path / name))
    with pytest.raises(ValueError, match=r"^pretrained='x\.pth' holds ResNet-50 weights, but backbone='cnn'; use resnet50\.$"):
        Config(pretrained="x.pth")


def test_vgg_is_a_different_architecture():
    m = make(backbone="vgg")
    assert not any(isinstance(x, nn.GELU) for x in m.modules())
    assert sum(isinstance(x, nn.Conv2d) for x in m.modules()) == 8
    assert m(torch.rand(2, 3, 32, 32)).shape == (1, 2, 10)


def test_normalisation_is_inside_the_model():
    m = make()
    x = torch.rand(2, 3, 32, 32)
    manual = (x - torch.tensor(MEAN).view(1, 3, 1, 1)) / torch.tensor(STD).view(1, 3, 1, 1)
    assert torch.allclose(m.normalize(x), manual)


def test_multihead_shapes_modes_and_independent_heads():
    m = make(heads=5).eval()
    x = torch.rand(4, 3, 32, 32)
    logits = m(x)
    assert logits.shape == (5, 4, 10)
    for i in range(5):
        assert torch.allclose(m.head_logits(x, i), logits[i], atol=1e-5)
        assert torch.allclose(m.scores(x, "single", i), logits[i], atol=1e-5)
    ens = m.scores(x, "ensemble")
    assert torch.allclose(ens.exp(), logits.softmax(-1).mean(0), atol=1e-6)
    assert torch.allclose(ens.exp().sum(-1), torch.ones(4), atol=1e-5)
    # independently initialised heads: no two equal
    w = m.weight.detach().flatten(1)
    assert all(not torch.allclose(w[i], w[j]) for i in range(5) for j in range(i + 1, 5))
    assert Classifier(m, "single", 3)(x).shape == (4, 10)
    with pytest.raises(ValueError, match="head index 5 is out of range for a model with 5 heads"):
        m.head_logits(x, 5)
    with pytest.raises(ValueError, match="Unknown inference mode 'vote'"):
        m.scores(x, "vote")


def flops(fn):
    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


def test_single_head_costs_exactly_a_one_head_forward():
    x = torch.rand(8, 3, 32, 32)
    plain, multi = make(heads=1).eval(), make(heads=10).eval()
    assert flops(lambda: multi.scores(x, "single", 7)) == flops(lambda: plain(x))
    head_flops = 2 * 8 * 10 * 128
    assert flops(lambda: multi(x)) == flops(lambda: plain(x)) + 9 * head_flops


@pytest.mark.parametrize("backbone", ["cnn", "resnet50"])
def test_gradient_checkpointing_changes_nothing_but_memory(backbone):
    x, y = torch.rand(16, 3, 32, 32), torch.randint(0, 10, (16,))
    results = []
    for ckpt in (False, True):
        m = make(backbone=backbone, heads=3, checkpointing=ckpt).train()
        loss = nn.functional.cross_entropy(m(x).flatten(0, 1), y.repeat(3))
        loss.backward()
        bn = [b for b in m.modules() if isinstance(b, nn.BatchNorm2d)]
        results.append((loss.detach(), [p.grad.clone() for p in m.parameters()],
                        [b.running_mean.clone() for b in bn], [b.num_batches_tracked.clone() for b in bn]))
    (l0, g0, r0, n0), (l1, g1, r1, n1) = results
    assert torch.allclose(l0, l1)
    assert all(torch.allclose(a, b, atol=1e-5) for a, b in zip(g0, g1))
    # the recomputation in backward must not count the batch twice in BatchNorm's running statistics
    assert all(torch.allclose(a, b) for a, b in zip(r0, r1)) and all(torch.equal(a, b) for a, b in zip(n0, n1))


def test_bad_head_counts_are_rejected():
    with pytest.raises(ValueError, match="heads"):
        make(heads=0)


def test_a_pretrained_run_loads_without_its_weights_file_and_records_which_it_was(tmp_path):
    torch.manual_seed(2)
    torch.save(torchvision.models.resnet50().state_dict(), tmp_path / "r50.pth")
    cfg = Config(backbone="resnet50", pretrained=str(tmp_path / "r50.pth"), train_size=100, epochs=1, batch_size=50,
                 **MINI)
    run_dir = ensure_trained(cfg, runs_dir=tmp_path / "runs", progress=False, log=lambda s: None)
    made_by = load_verified(run_dir / CHECKPOINT)["provenance"]
    assert made_by["pretrained_sha256"] == file_digest(tmp_path / "r50.pth")
    (tmp_path / "r50.pth").unlink()  # the checkpoint holds the weights: the file is not read again
    model, loaded = load_model(run_dir)
    assert loaded == cfg and model.weight.shape == (1, 10, 2048)
    with pytest.raises(ValueError, match=r"^pretrained='[^']*r50\.pth': no such file"):  # a new run needs it
        ensure_trained(cfg.replace(seed=1), runs_dir=tmp_path / "runs", progress=False, log=lambda s: None)
