"""The deployment files, proven without a Docker engine: linted, validated, and run as local processes."""

import os
import re
import shlex
import shutil
import socket
import subprocess
import sys
from dataclasses import fields
from pathlib import Path

import boto3
import pytest
import requests
from compose import COMPOSE_FILE, ENV_EXAMPLE, ROOT, LocalStack, load_compose, read_env_file, referenced_variables
from conftest import SCHEMA_PREFIX
from service import Process, wait_for

from mei_service.app import TASK_NAME
from mei_service.settings import PREFIX, Settings

BIN = Path(sys.executable).parent
DOCKERFILE = ROOT / "Dockerfile.gpu"
CODE_FOLDERS = ("mei", "mei_service", "workers")
# Containers run in a network of their own; here they share the machine with the tests.
TEST_VARIABLES = {
    "DJ_USER": "postgres",
    "DJ_PASS": "unused-with-trust-authentication",
    "DJ_DATABASE_NAME": "postgres",
    "POSTGRES_PORT": "5432",
    "MEI_SCHEMA": f"{SCHEMA_PREFIX}_compose_mei",
    "MEI_FABRIK_SCHEMA": f"{SCHEMA_PREFIX}_compose_fabrik",
    "MEI_DEMO_SCHEMA": f"{SCHEMA_PREFIX}_compose_demo",
    "MEI_DEMO_DEVICE": "cpu",
    "MEI_SERVICE_HEARTBEAT_INTERVAL": "1",
    "MEI_SERVICE_SOFT_SHUTDOWN_TIMEOUT": "2",
}


def free_port() -> str:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return str(probe.getsockname()[1])


def example_variables(**overrides: str) -> dict[str, str]:
    return read_env_file(ENV_EXAMPLE, overrides)


def variables_the_code_reads() -> set[str]:
    """``DJ_*`` and ``MEI_*`` names in the code, and every setting's ``MEI_SERVICE_*`` variable."""
    names = {PREFIX + setting.name.upper() for setting in fields(Settings)}
    for folder in CODE_FOLDERS:
        for path in (ROOT / folder).rglob("*.py"):
            names |= set(re.findall(r"[\"']((?:DJ|MEI)_[A-Z0-9_]*[A-Z0-9])[\"']", path.read_text()))
    return names - {PREFIX.rstrip("_")}


def test_the_dockerfile_passes_hadolint():
    result = subprocess.run([BIN / "hadolint", DOCKERFILE], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_compose_file_follows_the_compose_specification():
    command = [BIN / "check-jsonschema", "--builtin-schema", "vendor.compose-spec", COMPOSE_FILE]
    result = subprocess.run(command, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_variable_the_code_reads_is_in_the_env_example_and_every_one_there_is_used():
    example = set(example_variables())
    read_by_code = variables_the_code_reads()
    in_compose = referenced_variables(COMPOSE_FILE.read_text())
    in_other_values = referenced_variables(ENV_EXAMPLE.read_text())
    assert read_by_code - example == set(), "read by the code but missing from .env.example"
    assert in_compose - example == set(), "used by docker-compose.yml but missing from .env.example"
    assert example - read_by_code - in_compose - in_other_values == set(), "in .env.example but read by nothing"
    service_environment = load_compose(example_variables())["services"]["worker"]["environment"]
    assert read_by_code - set(service_environment) == set(), "read by the code but not passed to the services"


def test_the_compose_stack_keeps_its_promises():
    services = load_compose(example_variables())["services"]
    redis = " ".join(services["redis"]["command"])
    assert "--appendonly yes" in redis and "--maxmemory-policy noeviction" in redis
    assert services["postgres"]["volumes"] == ["postgres-data:/var/lib/postgresql/data"]
    [gpu] = services["worker"]["deploy"]["resources"]["reservations"]["devices"]
    assert gpu["driver"] == "nvidia" and len(gpu["device_ids"]) == 1 and "gpu" in gpu["capabilities"]
    assert services["demo"]["profiles"] == ["demo"]
    for name, service in services.items():
        assert "restart" in service, f"{name} has no restart policy"
        for dependency, condition in service.get("depends_on", {}).items():
            expected = "service_completed_successfully" if dependency in ("init", "minio-init") else "service_healthy"
            assert condition == {"condition": expected}, f"{name} starts before {dependency} is ready"
        if service["restart"] != "no":
            assert service["healthcheck"]["test"], f"{name} runs without a health check"
    # Secrets come only from the environment: the compose file holds none.
    secrets = [value for name, value in example_variables().items() if "PASS" in name or name.endswith("_AUTH")]
    assert not any(secret in COMPOSE_FILE.read_text() for secret in secrets)
    with pytest.raises(KeyError, match="DJ_PASS"):
        load_compose({name: value for name, value in example_variables().items() if name != "DJ_PASS"})


@pytest.fixture
def stack(tmp_path, database):
    """The compose file's own services running here; the infrastructure from the same binaries or stand-ins."""
    ports = {"REDIS_PORT": free_port(), "MINIO_PORT": free_port(), "MEI_SERVICE_FLOWER_PORT": free_port()}
    variables = example_variables(**TEST_VARIABLES, **ports, MEI_SERVICE_DEFAULT_QUEUE=f"{SCHEMA_PREFIX}_compose")
    local = LocalStack(load_compose(variables)["services"], volumes=tmp_path)
    processes: list[Process] = []

    def start(name: str, command: list[str], env: dict[str, str]) -> Process:
        path = f"{BIN}{os.pathsep}{os.environ['PATH']}"
        process = Process(command, tmp_path / f"{name}.log", {"PATH": path, "HOME": str(tmp_path), **env})
        processes.append(process)
        return process

    # redis: its command, on its published port, with its volume in a temporary folder.
    redis_command = local.services["redis"]["command"]
    here = f" --bind 127.0.0.1 --port {ports['REDIS_PORT']} --dir {tmp_path}"
    redis_command = [*redis_command[:-1], redis_command[-1] + here]
    start("redis", redis_command, local.environment("redis"))
    # minio: moto's S3 server stands in (no MinIO binary here); minio-init's `mc mb` becomes the same call.
    start("minio", [str(BIN / "moto_server"), "-H", "127.0.0.1", "-p", ports["MINIO_PORT"]], {})
    s3 = boto3.client(
        "s3",
        endpoint_url=f"http://127.0.0.1:{ports['MINIO_PORT']}",
        aws_access_key_id=variables["MINIO_ROOT_USER"],
        aws_secret_access_key=variables["MINIO_ROOT_PASSWORD"],
        region_name="us-east-1",
    )
    wait_for(lambda: _answers(s3), 30, message="S3 stand-in up")
    s3.create_bucket(Bucket=local.services["minio-init"]["environment"]["MINIO_BUCKET"])
    # postgres: the machine's own server, which the published port 5432 reaches.
    pg_isready = local.services["postgres"]["healthcheck"]["test"][1]
    postgres_environment = {**os.environ, **local.services["postgres"]["environment"]}
    subprocess.run(["sh", "-c", pg_isready], env=postgres_environment, check=True)
    try:
        yield local, start, s3, variables, processes
    finally:
        for process in reversed(processes):
            process.stop(timeout=30)


def _answers(s3) -> bool:
    try:
        s3.list_buckets()
    except Exception:
        return False
    return True


def test_the_compose_stack_runs_the_demo_end_to_end(stack):
    local, start, s3, variables, processes = stack

    def run_job(name: str, timeout: float) -> str:
        job = start(name, local.command(name), local.environment(name))
        job.process.wait(timeout)
        assert job.process.returncode == 0, f"{name} failed:\n{job.output()}"
        return job.output()

    def healthy(name: str) -> bool:
        check = subprocess.run(local.healthcheck(name), env=_env(local, name), capture_output=True, text=True)
        return check.returncode == 0

    assert "declared mei_service.demo.pipeline.MEI" in run_job("init", timeout=120)
    for name in ("scheduler", "worker", "flower"):
        start(name, local.command(name), local.environment(name))
    for name in ("scheduler", "worker", "flower"):
        wait_for(lambda name=name: healthy(name), 120, interval=1, message=f"{name} healthy")

    output = run_job("demo", timeout=600)
    mean = float(re.search(r"mean correlation of MEIs with true receptive fields: ([\d.]+)", output).group(1))
    assert mean > 0.9, output

    bucket = local.services["minio-init"]["environment"]["MINIO_BUCKET"]
    objects = s3.list_objects_v2(Bucket=bucket).get("Contents", [])
    assert sum(f"/{TEST_VARIABLES['MEI_DEMO_SCHEMA']}/" in item["Key"] for item in objects) >= 2 * 16
    flower = f"http://127.0.0.1:{variables['MEI_SERVICE_FLOWER_PORT']}"
    user, password = variables["MEI_SERVICE_FLOWER_BASIC_AUTH"].split(":", 1)
    assert requests.get(f"{flower}/api/workers", timeout=10).status_code == 401
    auth = (user, password)
    workers = wait_for(
        lambda: requests.get(f"{flower}/api/workers?refresh=1", auth=auth, timeout=30).json(), 60, message="workers"
    )
    assert any(name.startswith("mei-cpu0-") for name in workers)
    tasks = requests.get(f"{flower}/api/tasks", auth=auth, timeout=30).json().values()
    assert any(task["name"] == TASK_NAME and task["state"] == "SUCCESS" for task in tasks)
    secrets = [variables[name] for name in ("DJ_PASS", "MINIO_ROOT_PASSWORD", "REDIS_PASSWORD")] + [password]
    for process in processes:
        assert not any(secret in process.output() for secret in secrets), f"a secret in {process.log.name}"


def _env(local: LocalStack, name: str) -> dict[str, str]:
    return {"PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}", "HOME": str(local.volumes), **local.environment(name)}


def test_local_stack_commands_are_what_the_compose_file_says():
    local = LocalStack(load_compose(example_variables(REDIS_PORT="16379"))["services"])
    assert local.command("worker") == ["mei-service", "worker"]
    environment = local.environment("worker")
    assert environment["DJ_HOST"] == "127.0.0.1"
    assert environment["MEI_SERVICE_BROKER_URL"].endswith("@127.0.0.1:16379/0")
    assert '"endpoint": "127.0.0.1:9000"' in environment["DJ_STORES"]
    assert shlex.split(" ".join(local.healthcheck("worker"))) == ["mei-service", "health", "--worker"]
    assert shutil.which("redis-server"), "the stack test runs the compose file's Redis command"


def test_health_and_startup_report_what_is_wrong():
    def cli(*args: str, **env: str) -> subprocess.CompletedProcess:
        command = [sys.executable, "-m", "mei_service.cli", *args]
        return subprocess.run(command, env={**os.environ, **env}, capture_output=True, text=True, timeout=120)

    dead_broker = cli("health", MEI_SERVICE_BROKER_URL=f"redis://127.0.0.1:{free_port()}/0")
    assert dead_broker.returncode == 1 and "the broker does not answer" in dead_broker.stderr
    # A Redis database that no test's workers send heartbeats to.
    quiet_broker = "redis://127.0.0.1:6379/9"
    url = f"http://127.0.0.1:{free_port()}/healthcheck"
    no_worker = cli("health", "--worker", "--url", url, MEI_SERVICE_BROKER_URL=quiet_broker)
    assert no_worker.returncode == 1 and "no worker process on" in no_worker.stderr
    assert f"{url} does not answer" in no_worker.stderr
    assert cli("health", "--database").returncode == 0
    no_tables = cli("scheduler", MEI_SERVICE_TABLES="")
    assert no_tables.returncode != 0 and "MEI_SERVICE_TABLES" in no_tables.stderr
    bad_batch = cli("worker", MEI_BATCH_SIZE="many")
    assert bad_batch.returncode != 0 and "MEI_BATCH_SIZE must be a positive integer" in bad_batch.stderr
