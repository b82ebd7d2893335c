"""Lambda schedules (XLM syntax) and learning-rate schedules."""
import math

import pytest

from relm.config import OptimConfig
from relm.train.schedule import Lambda, lr_at


@pytest.mark.parametrize("spec, it, value", [
    ("1", 0, 1.0), ("1", 10**6, 1.0), ("0.25", 7, 0.25), (0, 3, 0.0),
    ("0:1,100000:0.1,300000:0", 0, 1.0),
    ("0:1,100000:0.1,300000:0", 50000, 0.55),
    ("0:1,100000:0.1,300000:0", 100000, 0.1),
    ("0:1,100000:0.1,300000:0", 200000, 0.05),
    ("0:1,100000:0.1,300000:0", 300000, 0.0),
    ("0:1,100000:0.1,300000:0", 10**7, 0.0),
    ("10:2,20:4", 0, 2.0),  # constant before the first point
    ("10:2,20:4", 15, 3.0),
    ("10:2,20:4", 25, 4.0),
])
def test_lambda_values(spec, it, value):
    assert Lambda(spec)(it) == pytest.approx(value)


@pytest.mark.parametrize("spec", ["", "abc", "0:1,", "0:1,10", "a:1,5:2", "10:1,5:2", "0:1,0:2", "0:x", "-5:1,3:2",
                                  "nan"])
def test_lambda_errors_name_the_string(spec):
    with pytest.raises(ValueError) as e:
        Lambda(spec, "lambda_ae")
    assert repr(spec.strip()) in str(e.value) and "lambda_ae" in str(e.value)


def test_adam_is_constant():
    o = OptimConfig(name="adam", lr=3e-4)
    assert [lr_at(o, s) for s in (1, 10, 10**6)] == [3e-4] * 3


@pytest.mark.parametrize("warmup", [1, 10, 4000])
def test_inverse_sqrt(warmup):
    o = OptimConfig(name="adam_inverse_sqrt", lr=1e-4, warmup_updates=warmup, warmup_init_lr=1e-7)
    step_lr = (1e-4 - 1e-7) / warmup
    if warmup > 1:
        assert lr_at(o, 1) == pytest.approx(1e-7 + step_lr)
        assert lr_at(o, warmup // 2) == pytest.approx(1e-7 + (warmup // 2) * step_lr)
        lrs = [lr_at(o, s) for s in range(1, warmup + 1)]
        assert all(a < b for a, b in zip(lrs, lrs[1:]))  # increasing during the warmup
    assert lr_at(o, warmup) == pytest.approx(1e-4)  # peak
    for s in (warmup, 4 * warmup, 100 * warmup):
        assert lr_at(o, s) == pytest.approx(1e-4 * math.sqrt(warmup) / math.sqrt(s))


def test_unknown_optimizer():
    with pytest.raises(ValueError, match="sgd"):
        lr_at(OptimConfig(name="sgd"), 1)


@pytest.mark.parametrize("name", ["adam_inverse_sqrt", "adam_warmup_constant", "adam_warmup_linear"])
def test_warmup_is_shared(name):
    o = OptimConfig(name=name, lr=1e-3, warmup_updates=10, warmup_init_lr=0.0, decay_updates=30)
    assert [lr_at(o, s) for s in (1, 5, 10)] == pytest.approx([1e-4, 5e-4, 1e-3])


def test_warmup_then_constant():
    o = OptimConfig(name="adam_warmup_constant", lr=1e-3, warmup_updates=10)
    assert [lr_at(o, s) for s in (10, 11, 1000, 10**6)] == [1e-3] * 4


def test_warmup_then_linear_decay():
    o = OptimConfig(name="adam_warmup_linear", lr=1e-3, warmup_updates=10, decay_updates=30)
    assert [lr_at(o, s) for s in (10, 20, 25, 30, 31, 1000)] == pytest.approx([1e-3, 5e-4, 2.5e-4, 0, 0, 0])


@pytest.mark.parametrize("decay", [0, 10])
def test_linear_decay_needs_decay_updates_after_warmup(decay):
    from relm.config import ConfigError, check
    with pytest.raises(ConfigError, match=r"'optim\.decay_updates' must be > warmup_updates \(10\)"):
        check(OptimConfig(name="adam_warmup_linear", warmup_updates=10, decay_updates=decay), "optim.")
