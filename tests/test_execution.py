"""A worker's batch, run in this process against the real PostgreSQL: each key settles on its own."""

import datajoint as dj
import experiment
from conftest import SCHEMA_PREFIX

from mei.main import MEIMethod, MEISeed, MEITemplate
from mei_service import jobs
from mei_service.demo.pipeline import Objective, TrainedEnsembleModel
from mei_service.tables import json_keys
from workers.execution import run_batch

schema = dj.Schema(f"{SCHEMA_PREFIX}_execution")
computed: list[int] = []


@schema
class FlakyMEI(MEITemplate):
    """A lab table with its own make_fetch and make_compute: one key's inputs cannot be fetched."""

    trained_model_table = TrainedEnsembleModel
    objective_table = Objective

    def make_fetch(self, key):
        if key["neuron_id"] == 2:
            raise LookupError("this key's seed is gone")
        return super().make_fetch(key)

    def make_compute(self, key, seed):
        computed.append(key["neuron_id"])
        return super().make_compute(key, seed)


class QuietProgress:
    def start(self, done: int) -> None: ...

    def finish_key(self, key: dict) -> None: ...

    def __call__(self, state) -> None: ...


def test_a_key_whose_inputs_cannot_be_fetched_fails_alone_and_overrides_are_honoured(trained, clean_framework_tables):
    method = MEIMethod().add_method("mei.methods.gradient_ascent", experiment.quick_method(iterations=5))
    MEISeed().insert1({"mei_seed": 4})
    keys = json_keys((FlakyMEI().key_source & trained["ensemble"] & method).keys())
    jobs.mark_queued(FlakyMEI, {"task-under-test": keys}, priority=5)
    computed.clear()

    result = run_batch(FlakyMEI, keys, "task-under-test", QuietProgress())

    assert [key["neuron_id"] for key in result.failed] == [2]
    assert sorted(key["neuron_id"] for key in result.done) == [0, 1, 3]
    assert sorted(computed) == [0, 1, 3]  # the table's own make_compute, key by key
    error = (FlakyMEI.jobs & {"neuron_id": 2}).fetch1()
    assert error["error_message"].startswith("LookupError") and "Traceback" in error["error_stack"]
    assert len(FlakyMEI & method) == 3
