"""MEIs in an S3 store: moto's server is a real S3 endpoint on the loopback interface."""

import socket

import boto3
import datajoint as dj
import experiment
import pytest
import torch
from conftest import SCHEMA_PREFIX

from mei.main import MEIMethod, MEISeed, MEITemplate
from mei_service.demo.pipeline import Objective, TrainedEnsembleModel

moto_server = pytest.importorskip("moto.server")


@pytest.fixture
def s3_store(monkeypatch, trained):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=port)
    server.start()
    endpoint = f"127.0.0.1:{port}"
    credentials = {"aws_access_key_id": "test-key", "aws_secret_access_key": "test-secret"}
    client = boto3.client("s3", endpoint_url=f"http://{endpoint}", region_name="us-east-1", **credentials)
    client.create_bucket(Bucket="meis")
    stores = dict(dj.config["stores"] or {})
    stores["s3meis"] = {
        "protocol": "s3",
        "endpoint": endpoint,
        "bucket": "meis",
        "location": "lab/meis",
        "access_key": credentials["aws_access_key_id"],
        "secret_key": credentials["aws_secret_access_key"],
        "secure": False,
    }
    dj.config["stores"] = stores
    monkeypatch.setenv("MEI_STORE", "s3meis")
    yield client
    server.stop()


def test_meis_round_trip_through_s3(trained, s3_store, clean_framework_tables):
    schema = dj.Schema(f"{SCHEMA_PREFIX}_s3")

    @schema
    class S3MEI(MEITemplate):
        trained_model_table = TrainedEnsembleModel
        objective_table = Objective

    method = MEIMethod().add_method("mei.methods.gradient_ascent", experiment.quick_method())
    MEISeed().insert1({"mei_seed": 1})
    S3MEI().populate(trained["ensemble"], method)
    rows = (S3MEI & method).to_dicts()
    assert len(rows) == experiment.DATASET["neurons"]
    assert all(isinstance(row["mei"], torch.Tensor) for row in rows)
    assert rows[0]["output"]["mei.objectives.EvaluationObjective"]["times"] == [0, 10, 20]
    keys = [item["Key"] for item in s3_store.list_objects_v2(Bucket="meis")["Contents"]]
    assert len(keys) == 2 * len(rows)
    assert all(key.startswith(f"lab/meis/_hash/{SCHEMA_PREFIX}_s3/") for key in keys)
