"""A validation score: each MEI scored on models it was not optimised against, stored in ``output``."""

import pytest
import torch

from mei import policy
from mei.batching import generate_many, why_not_batched
from mei.errors import ConfigurationError
from mei.methods import diverse_gradient_ascent, gradient_ascent
from mei.modules import ConstrainedOutputModel, ContrastiveOutputModel, EnsembleModel
from mei.policy import NotAllowedError
from mei.synthetic import LinearNonlinearPopulation, gabor_filters

SHAPE = (1, 1, 12, 16)


def config(**overrides) -> dict:
    return {
        "initial": {"path": "mei.initial.RandomNormal"},
        "optimizer": {"path": "torch.optim.SGD", "kwargs": {"lr": 1.0}},
        "stopper": {"path": "mei.stoppers.NumIterations", "kwargs": {"num_iterations": 30}},
        "postprocessing": {"path": "mei.legacy.ops.ChangeNorm", "kwargs": {"norm": 3.0}},
        "device": "cpu",
        **overrides,
    }


def members(count: int = 3) -> list[LinearNonlinearPopulation]:
    """Models of the same neurons that disagree a little, as ensemble members trained from other seeds do."""
    shared = gabor_filters(3, 12, 16, seed=0)
    return [
        LinearNonlinearPopulation(shared + 0.3 * gabor_filters(3, 12, 16, seed=10 + index)) for index in range(count)
    ]


def test_held_out_members_score_the_mei_climbed_on_the_others():
    models = members()
    objective = ConstrainedOutputModel(EnsembleModel(*models), 1)
    mei, score, output = gradient_ascent(None, objective, config(validation={"held_out": 1}), seed=2, shape=SHAPE)
    climbed_only, _, _ = gradient_ascent(
        None, ConstrainedOutputModel(EnsembleModel(*models[:2]), 1), config(), 2, shape=SHAPE
    )
    assert torch.equal(mei, climbed_only), "the held-out member takes no part in the ascent"
    expected = float(ConstrainedOutputModel(models[2], 1)(mei))
    assert output["validation"]["score"] == pytest.approx(expected, rel=1e-5)
    assert output["validation"]["score"] < score, "the MEI overfits the members it climbed"
    assert objective.model.members[2] is models[2], "the caller's objective is unchanged"


def test_another_model_from_the_allow_list_scores_the_mei_and_others_are_refused():
    objective = ConstrainedOutputModel(EnsembleModel(*members()), 0)
    spec = {"model": {"path": "mymodule.held_out_population", "kwargs": {"seed": 7}}}
    with policy.enforced():
        mei, _, output = gradient_ascent(None, objective, config(validation=spec), seed=1, shape=SHAPE)
    import mymodule

    expected = float(ConstrainedOutputModel(mymodule.held_out_population(7), 0)(mei))
    assert output["validation"]["score"] == pytest.approx(expected, rel=1e-5)
    hostile = {"model": {"path": "torch.hub.load", "kwargs": {"repo_or_dir": "/tmp"}}}
    with policy.enforced(), pytest.raises(NotAllowedError, match=r"torch\.hub"):
        gradient_ascent(None, objective, config(validation=hostile), seed=1, shape=SHAPE)


def test_diverse_meis_and_the_service_path_carry_the_validation_score():
    objective = ConstrainedOutputModel(EnsembleModel(*members()), 2)
    diverse = config(n_meis=3, diversity={"fraction": 0.8, "weight": 1.0}, validation={"held_out": 1})
    images, _, output = diverse_gradient_ascent(None, objective, diverse, seed=0, shape=SHAPE)
    expected = float(ConstrainedOutputModel(members()[2], 2)(images).mean())
    assert output["validation"]["score"] == pytest.approx(expected, rel=1e-5)
    with_validation = config(validation={"held_out": 1})
    assert "validation" in why_not_batched("mei.methods.gradient_ascent", with_validation, [objective])
    outcomes = dict(generate_many(None, [objective], "mei.methods.gradient_ascent", with_validation, [4], shape=SHAPE))
    assert "validation" in outcomes[0][2]


@pytest.mark.parametrize(
    ("validation", "message"),
    [({"held_out": 0}, "validation must be"), ({"held_out": 3}, "more than 3 members"), ({"other": 1}, "must be")],
)
def test_a_validation_setting_that_cannot_work_says_what_to_write(validation, message):
    objective = ConstrainedOutputModel(EnsembleModel(*members()), 0)
    with pytest.raises(ConfigurationError, match=message):
        gradient_ascent(None, objective, config(validation=validation), seed=1, shape=SHAPE)


def test_an_inhibitory_method_reports_the_validation_score_as_it_reports_score():
    models = members()
    objective = ConstrainedOutputModel(EnsembleModel(*models), 1)
    inhibitory = config(inhibitory=True, validation={"held_out": 1})
    mei, score, output = gradient_ascent(None, objective, inhibitory, seed=2, shape=SHAPE)
    assert score < 0
    assert output["validation"]["score"] == pytest.approx(-float(ConstrainedOutputModel(models[2], 1)(mei)), rel=1e-5)


def test_settings_that_cannot_be_combined_are_refused():
    objective = ConstrainedOutputModel(EnsembleModel(*members()), 0)
    transparent = config(
        validation={"held_out": 1},
        transparency=True,
        background={"path": "mei.backgrounds.ConstantBackground", "kwargs": {"value": 0.0}},
    )
    with pytest.raises(ConfigurationError, match="cannot be combined with transparency"):
        gradient_ascent(None, objective, transparent, seed=1, shape=SHAPE)
    contrast = ContrastiveOutputModel(EnsembleModel(*members()), 0, others=[1])
    diverse = config(n_meis=2, diversity={"fraction": 0.8, "weight": 1.0})
    with pytest.raises(ConfigurationError, match="share of a positive activation"):
        diverse_gradient_ascent(None, contrast, diverse, seed=1, shape=SHAPE)
    with pytest.raises(ConfigurationError, match="must be numbers"):
        diverse_gradient_ascent(None, objective, config(n_meis=2, diversity={"fraction": "most"}), seed=1, shape=SHAPE)
