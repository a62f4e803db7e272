"""User code of the kind the seed document shows: a custom stopper and a custom method function."""

import torch

from mei.objectives import EvaluationObjective
from mei.stoppers import NumIterations, OptimizationStopper


class EvaluationThreshold(OptimizationStopper):
    def __init__(self, threshold):
        self.threshold = threshold

    def __call__(self, current_state):
        if current_state.evaluation >= self.threshold:
            return True, None
        else:
            return False, None


def method(dataloaders, model, config, seed):
    """Generates a MEI."""
    torch.manual_seed(seed)
    mei = torch.zeros(1, 1, 4, 4) + config["value"]
    score = model(mei).sum().item()
    output = {"value": config["value"]}
    return mei, score, output


class NthOfRandomNormal:
    """Image ``index`` of ``torch.randn(total, ...)``: what image ``index`` of an ``n_meis=total`` run starts from."""

    def __init__(self, index, total):
        self.index = index
        self.total = total

    def __call__(self, *shape):
        return torch.randn(self.total, *shape[1:])[self.index : self.index + 1]


seen_models = []


def transaction_probe(dataloaders, model, config, seed):
    """A method that reports, as its score, whether it runs inside a database transaction."""
    import datajoint as dj

    seen_models.append(model.model)
    return torch.zeros(1, 1, 2, 2), float(dj.conn().in_transaction), {"seed": seed}


def paced_ascent(dataloaders, model, config, seed):
    """gradient_ascent after ``config["seconds"]`` of waiting: a key slow enough to interrupt."""
    import time

    from mei.methods import gradient_ascent

    config = dict(config)
    time.sleep(config.pop("seconds"))
    return gradient_ascent(dataloaders, model, config, seed)


def unreachable(dataloaders, model, config, seed):
    """A method for keys that must never be computed."""
    raise AssertionError("this key should not have been computed")


class NumIterationsOrThreshold(NumIterations):
    """Stops at ``num_iterations``, or earlier once the evaluation reaches ``threshold``: a ``__call__`` of its own
    that a batch must call on every step, although its base class has a fixed stop."""

    def __init__(self, num_iterations, threshold):
        super().__init__(num_iterations)
        self.threshold = threshold

    def __call__(self, current_state):
        return current_state.i_iter >= self.num_iterations or current_state.evaluation >= self.threshold, None


class EveryStepEvaluation(EvaluationObjective):
    """Logs every step although its interval says otherwise."""

    def __call__(self, current_state):
        return current_state.evaluation


def held_out_population(seed):
    """A lab's second model, loaded for validation: Gabor neurons drawn from ``seed``."""
    from mei.synthetic import LinearNonlinearPopulation, gabor_filters

    return LinearNonlinearPopulation(gabor_filters(3, 12, 16, seed=seed))


class AlphaCost:
    """A transparency regularization: it receives the mean alpha, as the reference passed it."""

    def __init__(self, weight):
        self.weight = weight

    def __call__(self, mean_alpha, iteration):
        return self.weight * mean_alpha
