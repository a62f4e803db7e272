"""Collecting unreferenced store objects on live tables: only what no row references is deleted."""

import datajoint as dj
import experiment
import pytest
import torch

from mei.garbage import GarbageCollector
from mei.main import MEIMethod, MEISeed
from mei.main import schema as mei_schema
from mei_service.demo.pipeline import MEI
from mei_service.demo.pipeline import schema as demo_schema


def collector() -> GarbageCollector:
    from mei.fabrik.tables import schema as fabrik_schema

    return GarbageCollector(demo_schema, mei_schema, fabrik_schema, store="mei")


def test_a_dry_run_on_live_tables_finds_only_what_no_row_references(trained, clean_framework_tables):
    collector().collect(dry_run=False)  # what earlier tests' deleted rows left behind
    MEIMethod().add_method("mei.methods.gradient_ascent", experiment.quick_method(iterations=3))
    MEISeed().insert1({"mei_seed": 1})
    MEI().populate(trained["ensemble"])
    [key, *_] = (MEI & trained["ensemble"]).keys()
    # DataJoint's own collector does not see the <torch@store> columns: every MEI would look unreferenced.
    blind = dj.gc.GarbageCollector(demo_schema, mei_schema, store="mei").collect(dry_run=True)
    assert blind["hash_paths_orphaned"] >= len(MEI & trained["ensemble"])
    assert collector().collect(dry_run=True)["hash_paths_orphaned"] == 0

    # An insert that fails after its objects were written (here: the key exists) leaves one unreferenced object.
    with pytest.raises(dj.errors.DuplicateError):
        MEI().insert1(
            dict(key, mei=torch.full((1, 1, 2, 2), 7.0), score=0.0, output={"x": 1}), allow_direct_insert=True
        )
    report = collector().collect(dry_run=True)
    assert report["hash_paths_orphaned"] == 2  # the new mei and output
    deleted = collector().collect(dry_run=False)
    assert deleted["hash_paths_deleted"] == 2
    assert collector().collect(dry_run=True)["hash_paths_orphaned"] == 0
    assert all(isinstance(row["mei"], torch.Tensor) for row in (MEI & trained["ensemble"]).to_dicts())
