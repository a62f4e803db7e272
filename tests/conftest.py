import copy
import os
import shutil
import sys
import tempfile
import uuid

# DataJoint reads its configuration once, when first imported: the environment is set before any test
# module imports it. Each test run works in schemas of its own, dropped at the end.
RUN_ID = uuid.uuid4().hex[:8]
SCHEMA_PREFIX = f"test_{RUN_ID}"
STORE_LOCATION = os.path.join(tempfile.gettempdir(), f"mei-{SCHEMA_PREFIX}-store")
from mei_service.local import apply_local_defaults  # noqa: E402 - imports no DataJoint

apply_local_defaults()
os.environ.update(
    MEI_SCHEMA=f"{SCHEMA_PREFIX}_mei",
    MEI_FABRIK_SCHEMA=f"{SCHEMA_PREFIX}_fabrik",
    MEI_DEMO_SCHEMA=f"{SCHEMA_PREFIX}_demo",
    MEI_STORE="mei",
    MEI_STORE_LOCATION=STORE_LOCATION,
    MEI_TEST_SEED_SCHEMA=f"{SCHEMA_PREFIX}_seedservice",
    MEI_TEST_LAB_SCHEMA=f"{SCHEMA_PREFIX}_labtables",
    # The service: a queue of this run's own, short heartbeats and progress intervals so that tests are quick.
    MEI_SERVICE_DEFAULT_QUEUE=f"{SCHEMA_PREFIX}",
    MEI_ALLOWED_MODULES="mei_service.demo.builders,mei_service.demo.pipeline,seed_pipeline,lab_tables,mymodule",
    MEI_SERVICE_HEARTBEAT_INTERVAL="1",
    MEI_SERVICE_HEARTBEAT_TTL="4",
    MEI_SERVICE_PROGRESS_INTERVAL="0.3",
    MEI_SERVICE_SOFT_SHUTDOWN_TIMEOUT="2",
    MEI_SERVICE_RETRY_BACKOFF_MAX="8",
    PYTHONPATH=os.pathsep.join(filter(None, [os.path.dirname(__file__), os.environ.get("PYTHONPATH")])),
)

import pytest  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402


class Quadratic(nn.Module):
    """f(x) = -sum((target - x)^2) per image: its MEI is ``target``."""

    def __init__(self, target: torch.Tensor) -> None:
        super().__init__()
        self.target = nn.Parameter(target.clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return -((self.target - x) ** 2).flatten(1).sum(dim=1)


def seed_method_config(**overrides) -> dict:
    """The seed document's example method config, on the CPU."""
    config = {
        "initial": {"path": "mei.initial.RandomNormal"},
        "optimizer": {"path": "torch.optim.SGD", "kwargs": {"lr": 0.1}},
        "stopper": {"path": "mei.stoppers.NumIterations", "kwargs": {"num_iterations": 1000}},
        "objectives": [{"path": "mei.objectives.EvaluationObjective", "kwargs": {"interval": 10}}],
        "device": "cpu",
    }
    config.update(copy.deepcopy(overrides))
    return config


@pytest.fixture
def target() -> torch.Tensor:
    return torch.randn(1, 1, 12, 16, generator=torch.Generator().manual_seed(1))


def drop_test_schemas() -> None:
    import datajoint as dj

    connection = dj.conn()
    rows = connection.query(
        "SELECT schema_name FROM information_schema.schemata WHERE schema_name LIKE %s", args=(f"{SCHEMA_PREFIX}%",)
    ).fetchall()
    for (name,) in rows:
        connection.query(f'DROP SCHEMA IF EXISTS "{name}" CASCADE')


@pytest.fixture(scope="session")
def database():
    """The test run's PostgreSQL schemas and store; everything is dropped when the run ends."""
    import datajoint as dj

    dj.config["safemode"] = False
    return dj.conn()


def pytest_sessionfinish(session, exitstatus):
    # Test modules may create schemas on import (tests/seed_pipeline.py), so the cleanup is unconditional.
    if "datajoint" in sys.modules:
        drop_test_schemas()
    shutil.rmtree(STORE_LOCATION, ignore_errors=True)


@pytest.fixture(scope="session")
def trained(database):
    """A small trained ensemble of the demo pipeline (``tests/experiment.py``), with its objective table."""
    import experiment

    return experiment.fill()


@pytest.fixture
def clean_framework_tables(database):
    """Methods and seeds are shared by every MEI table: each test that adds some starts and ends without any."""
    from mei.main import MEIMethod, MEISeed

    MEIMethod().delete()
    MEISeed().delete()
    yield
    MEIMethod().delete()
    MEISeed().delete()
