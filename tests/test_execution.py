"""A worker's batch, run in this process against the real PostgreSQL: each key settles on its own."""

import datajoint as dj
import experiment
from conftest import SCHEMA_PREFIX

from mei.main import MEIMethod, MEISeed, MEITemplate
from mei_service import jobs
from mei_service.demo.pipeline import MEI, Objective, TrainedEnsembleModel
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


def test_a_batch_takes_queued_keys_of_its_model_and_method_from_other_tasks(
    trained, clean_framework_tables, monkeypatch
):
    monkeypatch.setenv("MEI_BATCH_SIZE", "3")
    method = MEIMethod().add_method("mei.methods.gradient_ascent", experiment.quick_method(iterations=3))
    other_method = MEIMethod().add_method("mei.methods.gradient_ascent", experiment.quick_method(iterations=4))
    MEISeed().insert1({"mei_seed": 4})
    keys = json_keys((MEI().key_source & trained["ensemble"] & method).keys())
    others = json_keys((MEI().key_source & trained["ensemble"] & other_method).keys())
    assert len(keys) >= 4
    # One key per task, as `enqueue --batch-size 1` sends them.
    tasks = {f"task-{index}": [key] for index, key in enumerate(keys + others)}
    jobs.mark_queued(MEI, tasks, priority=5)

    first = run_batch(MEI, tasks["task-0"], "task-0", QuietProgress())

    assert len(first.done) == 3 and keys[0] in first.done
    assert all(key in keys for key in first.done), "only keys of the same model and method join the batch"
    later = [run_batch(MEI, tasks[task_id], task_id, QuietProgress()) for task_id in list(tasks)[1:]]
    skipped = {frozenset(key.items()) for result in later for key in result.skipped}
    taken = {frozenset(key.items()) for key in first.done} - {frozenset(keys[0].items())}
    assert taken <= skipped, "the messages of the keys taken arrive late and write nothing"
    assert sum(len(result.done) for result in [first, *later]) == len(keys + others), "each key is written once"
    counts = jobs.count_states(MEI, keys + others)
    assert (counts["done"], counts["queued"], counts["running"]) == (len(keys + others), 0, 0)
