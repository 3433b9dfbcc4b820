"""The metric primitives of ``dtlib.metrics`` (docs/protocol.md section 3) and ``predict``."""
import math

import pytest
import torch

from dtlib.metrics import accuracy, fooling_rate, predict, targeted_success

pytestmark = pytest.mark.precision  # trains or evaluates: run under both precisions (make test-other-precision)


def test_metric_definitions():
    y = torch.tensor([0, 1, 2, 3])
    clean = torch.tensor([0, 1, 2, 0])  # 3 of 4 right
    adv = torch.tensor([3, 1, 3, 3])    # label changed on images 0, 2, 3
    assert accuracy(clean, y) == 0.75
    assert fooling_rate(clean, adv) == 0.75
    assert accuracy(adv, y) == 0.5  # images 1 and 3
    # target 3: images of class 3 are excluded; 2 of the other 3 land on 3
    assert math.isclose(targeted_success(adv, y, 3), 2 / 3, rel_tol=1e-6)
    # a prediction that changes to another wrong class still counts as fooled
    assert fooling_rate(torch.tensor([1]), torch.tensor([2])) == 1.0


def test_predict_adds_the_perturbation_and_clamps():
    seen = []
    fn = lambda x: (seen.append(x.clone()), torch.zeros(len(x), 10))[1]
    images = torch.full((3, 3, 2, 2), 255, dtype=torch.uint8)
    predict(fn, images, delta=torch.full((1, 3, 2, 2), 0.5), batch_size=2)
    assert len(seen) == 2 and torch.equal(torch.cat(seen), torch.ones(3, 3, 2, 2))


def test_scored_subset_is_class_balanced_even_for_class_sorted_files(mini):
    from dtlib.evaluate import scored_subset
    test = mini["test"]
    order = test.y.argsort(stable=True)  # CIFAR-10 npz files may store images sorted by class
    sorted_split = test.subset(order)
    sub = scored_subset(sorted_split, 200)
    assert len(sub) == 200 and sub.y.bincount(minlength=10).tolist() == [20] * 10
    assert scored_subset(sorted_split, 0) is sorted_split
