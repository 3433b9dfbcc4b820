import dataclasses

import pytest

from dtlib import Config
from dtlib.config import FIELD_TYPES, parse_overrides


def test_every_field_has_a_group_and_a_doc():
    for f in dataclasses.fields(Config):
        assert f.metadata["group"] in ("train", "eval", "runtime") and f.metadata["doc"]


def test_command_line_values_are_typed_and_fractions_work():
    o = parse_overrides(["eps=10/255", "heads=5", "checkpointing=true", "method=dt"])
    assert o == {"eps": 10 / 255, "heads": 5, "checkpointing": True, "method": "dt"}
    assert Config().replace(**o).heads == 5


def test_cache_key_tracks_training_fields_only():
    base = Config()
    assert base.train_hash() == Config().train_hash()
    for name, value in [("heads", 2), ("lambda_div", 0.5), ("seed", 1), ("eps", 8 / 255), ("data", "mini")]:
        assert base.replace(**{name: value}).train_hash() != base.train_hash(), name
    for name, value in [("eval_eps", 8 / 255), ("uap_epochs", 9), ("device", "cpu"), ("checkpointing", True),
                        ("compile", True)]:
        assert base.replace(**{name: value}).train_hash() == base.train_hash(), name
    # "auto" is keyed by what it resolves to, so bf16 and fp32 runs never share a directory
    assert base.train_hash("bf16") != base.train_hash("fp32") == base.replace(precision="fp32").train_hash()
    assert base.eval_hash() != base.replace(eval_eps=8 / 255).eval_hash()
    assert base.eval_hash() == base.replace(heads=3).eval_hash()


def test_a_training_field_added_later_keeps_earlier_runs_keys_at_its_legacy_value():
    # runs cached before uap_objective existed trained with ensemble_ce: the same directory
    import hashlib
    import json
    from dtlib.config import CODE_VERSION, ADDED_TRAIN_FIELDS, METHOD_FIELDS
    cfg = Config(method="dt", heads=5)
    later = {*ADDED_TRAIN_FIELDS, *METHOD_FIELDS["entropy_dt"]}  # entropy_dt's own fields never key a dt run
    before = {k: v for k, v in cfg.group("train").items() if k not in later}
    blob = json.dumps({"code": CODE_VERSION, **before, "precision": "bf16"}, sort_keys=True)
    assert cfg.train_hash("bf16") == hashlib.sha256(blob.encode()).hexdigest()[:12]
    assert cfg.replace(uap_objective="loss").train_hash("bf16") != cfg.train_hash("bf16")
    # uap_every: dt's runs at 1 are the runs cached before it existed; 2 is another run, for dt only
    assert cfg.replace(uap_every=2).train_hash("bf16") != cfg.train_hash("bf16")


@pytest.mark.parametrize("overrides,message", [
    ({"heads": 0}, "heads \\(K\\) must be at least 1, got 0"),
    ({"uap_objective": "ce"}, "Unknown uap_objective 'ce'; choose one of ensemble_ce, loss"),
    ({"method": "dt", "uap_every": 0}, "uap_every must be at least 1, got 0"),
    ({"method": "uat", "uap_every": 2}, "uap_every=2, uap_objective='ensemble_ce', uap_fraction=1.0: dt's, not read by method='uat'"),
    ({"uap_objective": "loss"}, "uap_every=1, uap_objective='loss', uap_fraction=1.0: dt's, not read by method='standard'"),
    ({"uap_fraction": 0.5}, "uap_every=1, uap_objective='ensemble_ce', uap_fraction=0.5: dt's, not read by method='standard'"),
    ({"method": "uat", "perturbed_fraction": 0.5}, "perturbed_fraction=0.5: dt's, not read by method='uat'"),
    ({"method": "dt", "perturbed_fraction": 0.0}, "perturbed_fraction must be a fraction in \\(0, 1\\], got 0.0"),
    ({"heads": "two"}, "heads='two' is not an integer"),
    ({"heads": 2.5}, "heads=2.5 must be an integer"),
    ({"eps": -0.1}, "eps=-0.1 is outside \\[0, 1\\]"),
    ({"eval_eps": 8}, "eval_eps=8.0 is outside \\[0, 1\\] for the linf norm"),
    ({"eval_norm": "l2", "eval_eps": 60}, "eval_eps=60.0 is outside \\[0, 55.43\\] for the l2 norm"),
    ({"uap_lr": "0.1,x"}, "uap_lr='0.1,x' is not a number"),
    ({"uap_lr": "0"}, "uap_lr='0' must be one or more positive numbers"),
    ({"eval_split": "train"}, "Unknown eval_split 'train'"),
    ({"eval_size": 15}, "eval_size=15 must be a multiple of 10"),
    ({"norm": "l1"}, "Unknown norm 'l1'"),
    ({"method": "trades"}, "Unknown method 'trades'"),
    ({"backbone": "vit"}, "Unknown backbone 'vit'"),
    ({"eval_modes": "ensemble,vote"}, "Unknown inference mode 'vote'"),
    ({"heads": 3, "eval_head": 3}, "eval_head 3 is out of range for a model with 3 heads"),
    ({"lambda_div": -1.0}, "lambda_div must be non-negative"),
    ({"lambda_cons": float("nan")}, "lambda_cons=nan must be a finite number"),
    ({"batch_size": 0}, "batch_size must be at least 2"),
    ({"seed": 2**40}, "seed must be in \\[0, 2\\*\\*31\\)"),
    ({"colour": "red"}, "Unknown config field 'colour'"),
])
def test_bad_configs_are_rejected_with_one_sentence(overrides, message):
    with pytest.raises(ValueError, match=message):
        Config().replace(**overrides)


def test_l2_radii_beyond_one_are_valid():
    """L2 radii are in pixel units over the whole image: an L-inf 10/255 UAP has L2 norm 2.17."""
    cfg = Config().replace(eval_norm="l2", eval_eps=2.0, norm="l2", eps=3.0)
    assert cfg.eval_eps == 2.0 and cfg.eps == 3.0
    assert Config().replace(uap_lr="0.05,0.2").uap_lrs == [0.05, 0.2]


def test_field_types_cover_every_field():
    assert set(FIELD_TYPES) == {f.name for f in dataclasses.fields(Config)}
