"""Bad input to Bayesian adaptation, each one clear line: a prior file written for another
parametric model, and a support set too small for a head fitted through the engine."""

from __future__ import annotations

import pytest
import torch

from matmeta.bayes import ParametricPriorHead, adapt_parametric
from matmeta.errors import InputError
from matmeta.models.parametric import JMAK, ArrheniusJMAK, Prior


def test_a_prior_file_for_another_parametric_model_is_refused_in_one_line(tmp_path):
    other = ArrheniusJMAK()
    path = Prior.from_std(other.name, other.flat_names, [0.0] * len(other.flat_names),
                          [1.0] * len(other.flat_names)).save(tmp_path / "arrhenius.json")
    with pytest.raises(InputError) as exc:
        Prior.load(path, model=JMAK())
    msg = str(exc.value)
    assert str(path) in msg and "'arrhenius_jmak'" in msg and "'jmak'" in msg
    assert "\n" not in msg
    # a prior file with the right model name but other parameters is refused the same way
    bad = Prior.from_std("jmak", ["ln_k", "n"], [0.0, 0.0], [1.0, 1.0]).save(tmp_path / "b.json")
    with pytest.raises(InputError, match="do not match") as exc:
        Prior.load(bad, model=JMAK())
    assert "\n" not in str(exc.value)
    # and adapting with a loaded prior of another model fails before any fit
    prior = Prior.load(path)
    with pytest.raises(InputError, match="not 'jmak'"):
        adapt_parametric(JMAK(), prior, torch.tensor([10.0, 100.0]), torch.tensor([0.1, 0.5]))
    with pytest.raises(InputError, match="not 'jmak'"):
        ParametricPriorHead(JMAK(), prior).fit(None)
