"""The deployment files, proven without a Docker engine: linted, validated, and run as local processes."""

import json
import os
import re
import secrets
import shlex
import shutil
import socket
import subprocess
import sys
from dataclasses import fields
from pathlib import Path

import boto3
import pytest
import redis
import requests
import yaml
from compose import COMPOSE_FILE, ENV_EXAMPLE, ROOT, LocalStack, load_compose, read_env_file, referenced_variables
from conftest import SCHEMA_PREFIX
from service import Process, wait_for

from mei_service.app import TASK_NAME
from mei_service.cli import parser
from mei_service.settings import PREFIX, Settings

BIN = Path(sys.executable).parent
DOCKERFILE = ROOT / "Dockerfile.gpu"
ROLES_SQL = ROOT / "deploy" / "postgres-init" / "10-roles.sql"
BUCKET_POLICIES = sorted((ROOT / "deploy" / "minio").glob("*.json"))
CODE_FOLDERS = ("mei", "mei_service", "workers")
PLACEHOLDER = "change-me"
# Services of other images: their entrypoints and health checks are shell scripts around the image's own.
INFRASTRUCTURE = ("postgres", "redis", "minio", "minio-init")

# What each service reads (the code's environ/getenv and mei_service.settings): the compose file gives it exactly
# this. Flower watches the broker; the scheduler enqueues and reads jobs rows; neither touches the store.
DATABASE = {"DJ_HOST", "DJ_PORT", "DJ_USER", "DJ_PASS", "DJ_DATABASE_NAME", "DJ_BACKEND", "DJ_USE_TLS"} | {
    "DJ_JOBS_ADD_JOB_METADATA",
    "DJ_LOG_LEVEL",
}
TABLES = {"MEI_SCHEMA", "MEI_FABRIK_SCHEMA", "MEI_DEMO_SCHEMA", "MEI_STORE"}
POLICY = {"MEI_ALLOWED_MODULES", "MEI_MAX_N_MEIS", "MEI_MAX_ITERATIONS"}
BROKER = {"MEI_SERVICE_BROKER_URL", "MEI_SERVICE_RESULT_BACKEND", "MEI_SERVICE_DEFAULT_QUEUE"}
STORE = {"DJ_STORES", "MEI_STORE_LOCATION"}
ENQUEUE = {"MEI_SERVICE_DEFAULT_PRIORITY", "MEI_SERVICE_BATCH_SIZE", "MEI_SERVICE_MAX_BATCH_SIZE"}
# The scheduler's own: the tables it tops up, and when it gives keys back.
SCHEDULER = {"MEI_SERVICE_TABLES", "MEI_SERVICE_HEARTBEAT_TTL", "MEI_SERVICE_CLAIM_TIMEOUT"}
EXECUTION = {"MEI_MODEL_CACHE_SIZE", "MEI_BATCH_SIZE", "MEI_SERVICE_HEARTBEAT_TTL"} | {
    f"MEI_SERVICE_{name}"
    for name in (
        "VISIBILITY_TIMEOUT",
        "TASK_TIME_LIMIT",
        "RETRY_BACKOFF_MAX",
        "MAX_RETRIES",
        "RESULT_EXPIRES",
        "HEARTBEAT_INTERVAL",
        "SOFT_SHUTDOWN_TIMEOUT",
        "PROGRESS_INTERVAL",
    )
}
MINIO_ROOT = {"MINIO_ROOT_USER", "MINIO_ROOT_PASSWORD"}
RECEIVES = {
    "postgres": {"POSTGRES_USER", "POSTGRES_PASSWORD", "POSTGRES_DB", "DJ_USER", "DJ_PASS", "MEI_DB_MEMBER_ROLE"},
    "redis": {"REDIS_USER", "REDIS_PASSWORD", "REDIS_MEMBER_USER", "REDIS_MEMBER_PASSWORD"},
    "minio": MINIO_ROOT,
    "minio-init": MINIO_ROOT | {"MINIO_URL", "MINIO_BUCKET", "MEI_S3_ACCESS_KEY", "MEI_S3_SECRET_KEY"},
    "init": DATABASE | TABLES | POLICY | {"MEI_SERVICE_TABLES"},
    "scheduler": DATABASE | TABLES | POLICY | BROKER | ENQUEUE | SCHEDULER,
    "worker": DATABASE | TABLES | POLICY | BROKER | STORE | EXECUTION,
    "flower": BROKER | {"MEI_SERVICE_FLOWER_BASIC_AUTH", "MEI_SERVICE_FLOWER_PORT"},
    "demo": DATABASE | TABLES | POLICY | BROKER | STORE | ENQUEUE,
}
# Variables that are or carry a secret (the URLs carry Redis's password, DJ_STORES the S3 keys).
SECRETS = {
    "POSTGRES_PASSWORD",
    "DJ_PASS",
    "REDIS_PASSWORD",
    "REDIS_MEMBER_PASSWORD",
    "MINIO_ROOT_PASSWORD",
    "MEI_S3_SECRET_KEY",
    "MEI_SERVICE_FLOWER_BASIC_AUTH",
    "MEI_SERVICE_BROKER_URL",
    "MEI_SERVICE_RESULT_BACKEND",
    "DJ_STORES",
}
# Containers run in a network of their own; here they share the machine with the tests. The database is one
# of this run's own, with roles of its own (the stack fixture), on the machine's PostgreSQL (trust authentication:
# passwords are not checked there, privileges are).
RUN = f"{SCHEMA_PREFIX}_compose"
MEMBER = f"{RUN}_alice"
SERVICES = ("scheduler", "worker", "flower")
TEST_VARIABLES = {
    "POSTGRES_USER": "postgres",
    "DJ_USER": f"{RUN}_service",
    "MEI_DB_MEMBER_ROLE": f"{RUN}_members",
    "DJ_DATABASE_NAME": RUN,
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


def generated_secrets() -> dict[str, str]:
    """A fresh secret in place of each change-me placeholder of .env.example (``lab:change-me-four`` keeps its user)."""
    lines = [line.partition("=") for line in ENV_EXAMPLE.read_text().splitlines() if not line.startswith("#")]
    return {
        name: re.sub(rf"{PLACEHOLDER}[\w-]*", lambda _: secrets.token_urlsafe(18), value)
        for name, _, value in lines
        if PLACEHOLDER in value
    }


def raw_services() -> dict[str, dict]:
    """The services as written, YAML merges applied, variables not substituted."""
    return yaml.safe_load(COMPOSE_FILE.read_text())["services"]


def variables_the_code_reads() -> set[str]:
    """``DJ_*`` and ``MEI_*`` names in the code, every setting's ``MEI_SERVICE_*`` variable, and the ``DJ_*``
    variables that DataJoint reads itself."""
    names = {PREFIX + setting.name.upper() for setting in fields(Settings)} | DATABASE | {"DJ_STORES"}
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
    services = load_compose(example_variables())["services"]
    passed = {name for service in services.values() for name in service.get("environment") or {}}
    assert read_by_code - passed == set(), "read by the code but passed to no service"


def test_each_service_receives_only_the_variables_it_reads():
    services = load_compose(example_variables())["services"]
    assert set(services) == set(RECEIVES)
    read_by_code = variables_the_code_reads()
    for name, service in services.items():
        received = set(service.get("environment") or {})
        expected = RECEIVES[name]
        assert received == expected, f"{name}: extra {received - expected}, missing {expected - received}"
        if name not in INFRASTRUCTURE:
            assert received <= read_by_code, f"{name} receives variables no code reads"
    assert not {"DJ_PASS", "DJ_STORES"} & set(services["flower"]["environment"])
    assert "DJ_STORES" not in {**services["scheduler"]["environment"], **services["init"]["environment"]}
    # A secret comes from .env (`${NAME:?...}`), never from a default or the file itself.
    for name, service in raw_services().items():
        for variable, value in (service.get("environment") or {}).items():
            if variable in SECRETS:
                assert re.fullmatch(rf"\$\{{{variable}:\?[^}}]*\}}", value), f"{name}: {variable}={value}"


def test_published_ports_bind_to_127_0_0_1_unless_configured():
    def host_addresses(variables: dict[str, str]) -> list[str]:
        ports = [port for service in load_compose(variables)["services"].values() for port in service.get("ports", [])]
        # Short syntax host:published:container, or the long syntax's host_ip; without either, every interface.
        return [
            port.get("host_ip", "") if isinstance(port, dict) else str(port).count(":") == 2 and port.split(":")[0]
            for port in ports
        ]

    assert host_addresses(example_variables(MEI_BIND_ADDRESS="", MEI_FLOWER_BIND_ADDRESS="")) == ["127.0.0.1"] * 4
    lab = host_addresses(example_variables(MEI_BIND_ADDRESS="10.1.2.3"))
    assert sorted(lab) == ["10.1.2.3", "10.1.2.3", "10.1.2.3", "127.0.0.1"], "Flower stays on 127.0.0.1"


def test_the_services_use_a_database_role_and_an_s3_user_of_their_own():
    variables = example_variables()
    services = load_compose(variables)["services"]
    superuser = services["postgres"]["environment"]["POSTGRES_USER"]
    for name in ("init", "scheduler", "worker", "demo"):
        assert services[name]["environment"]["DJ_USER"] not in ("", superuser), name
    root = {variables["MINIO_ROOT_USER"], variables["MINIO_ROOT_PASSWORD"]}
    for name in ("worker", "demo"):
        environment = services[name]["environment"]
        store = json.loads(environment["DJ_STORES"])[environment["MEI_STORE"]]
        assert (store["access_key"], store["secret_key"]) == (
            variables["MEI_S3_ACCESS_KEY"],
            variables["MEI_S3_SECRET_KEY"],
        )
        assert not root & {store["access_key"], store["secret_key"]}, f"{name} uses MinIO's root account"
    assert "MINIO_ROOT" not in ENV_EXAMPLE.read_text().partition("DJ_STORES=")[2].splitlines()[0]
    # The roles script runs at the database's initialisation, and makes the service's role no superuser.
    assert "./deploy/postgres-init:/docker-entrypoint-initdb.d:ro" in services["postgres"]["volumes"]
    assert re.search(r"ALTER ROLE :\"service\" WITH LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE", ROLES_SQL.read_text())


# Listing the bucket and working on its objects; nothing that creates, deletes or configures a bucket.
OBJECT_ACTIONS = {
    "s3:GetBucketLocation",
    "s3:ListBucket",
    "s3:ListBucketMultipartUploads",
    "s3:GetObject",
    "s3:PutObject",
    "s3:DeleteObject",
    "s3:AbortMultipartUpload",
    "s3:ListMultipartUploadParts",
}


@pytest.mark.parametrize("path", BUCKET_POLICIES, ids=lambda path: path.name)
def test_the_bucket_policies_allow_object_operations_in_the_bucket_only(path):
    statements = json.loads(path.read_text())["Statement"]
    for statement in statements:
        assert statement["Effect"] == "Allow" and set(statement["Action"]) <= OBJECT_ACTIONS
        # minio-init puts MINIO_BUCKET in place of BUCKET.
        assert set(statement["Resource"]) <= {"arn:aws:s3:::BUCKET", "arn:aws:s3:::BUCKET/*"}


def secret_references(script: str) -> set[str]:
    """Secret variables that Compose would substitute into ``script`` (``$$NAME`` is left to the container)."""
    return {name for name in referenced_variables(script) if name in SECRETS}


def test_no_secret_is_substituted_into_a_command_line():
    for name, service in raw_services().items():
        for field in ("entrypoint", "command"):
            assert not secret_references(json.dumps(service.get(field, ""))), f"{name}'s {field}"
        assert not secret_references(json.dumps(service.get("healthcheck", {}))), f"{name}'s health check"


SPIED = ("docker-entrypoint.sh", "redis-server", "redis-cli", "pg_isready", "mc")


@pytest.fixture
def spy(tmp_path) -> Path:
    """Stand-ins for the programs the infrastructure's scripts start: each logs its arguments (``argv``), its
    standard input and the files it is given (``input``), and REDISCLI_AUTH (``auth``)."""
    folder = tmp_path / "spy"
    folder.mkdir()
    for program in SPIED:
        (folder / program).write_text(
            "#!/bin/sh\n"
            f'echo "{program} $*" >> {folder}/argv\n'
            f'[ -z "${{REDISCLI_AUTH:-}}" ] || echo "$REDISCLI_AUTH" >> {folder}/auth\n'
            f'for argument; do [ ! -f "$argument" ] || cat "$argument" >> {folder}/input; done\n'
            f"cat >> {folder}/input\n"
        )
        (folder / program).chmod(0o755)
    return folder


def run_spied(spy: Path, command: list[str], environment: dict[str, str]) -> subprocess.CompletedProcess:
    env = {**environment, "PATH": f"{spy}{os.pathsep}{os.environ['PATH']}", "TMPDIR": str(spy)}
    return subprocess.run(command, env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=30)


def test_the_infrastructure_gets_its_secrets_from_the_environment_not_its_command_lines(spy):
    variables = example_variables(**generated_secrets())
    local = LocalStack(load_compose(variables)["services"])
    for name in INFRASTRUCTURE:
        result = run_spied(spy, local.argv(name), local.environment(name))
        assert result.returncode == 0, f"{name}: {result.stderr}"
        if "healthcheck" in local.services[name]:
            run_spied(spy, local.healthcheck(name), local.environment(name))
    argv, given = (spy / "argv").read_text(), (spy / "input").read_text()
    assert not [name for name in SECRETS if variables[name] in argv], f"a secret on a command line:\n{argv}"
    # Redis: its ACL in its configuration file; redis-cli's password in REDISCLI_AUTH.
    for user in ("REDIS_USER", "REDIS_MEMBER_USER"):
        password = variables[user.replace("USER", "PASSWORD")]
        assert f"user {variables[user]} on >{password} ~* &* +@all -@dangerous\n" in given
    assert "user default off" in given and re.search(r"redis-server /\S+ --appendonly yes", argv)
    assert (spy / "auth").read_text().split() == [variables["REDIS_PASSWORD"]]
    # minio-init: the bucket, both policies naming it, the service's user with its key on standard input.
    bucket, user = variables["MINIO_BUCKET"], variables["MEI_S3_ACCESS_KEY"]
    assert f"mc mb --ignore-existing stack/{bucket}" in argv
    assert f"mc admin user add stack {user}\n" in argv and variables["MEI_S3_SECRET_KEY"] in given
    assert f"mc admin policy attach stack mei-readwrite --user {user}" in argv
    assert given.count(f'"arn:aws:s3:::{bucket}/*"') == 2 and "BUCKET" not in given


@pytest.mark.parametrize("name", INFRASTRUCTURE)
def test_the_infrastructure_refuses_the_placeholders(spy, name):
    local = LocalStack(load_compose(example_variables())["services"])
    result = run_spied(spy, local.argv(name), local.environment(name))
    assert result.returncode != 0 and PLACEHOLDER in result.stderr
    assert not (spy / "argv").exists(), "started with a placeholder secret"


def test_the_compose_stack_keeps_its_promises():
    services = load_compose(example_variables())["services"]
    redis_server = " ".join(services["redis"]["command"])
    assert "--appendonly yes" in redis_server and "--maxmemory-policy noeviction" in redis_server
    assert services["postgres"]["volumes"][0] == "postgres-data:/var/lib/postgresql/data"
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
    with pytest.raises(KeyError, match="DJ_PASS"):
        load_compose({name: value for name, value in example_variables().items() if name != "DJ_PASS"})


def psql(database: str, *args: str, env: dict[str, str] | None = None, user: str = "postgres") -> str:
    command = ["psql", "-h", "127.0.0.1", "-U", user, "-d", database, "-v", "ON_ERROR_STOP=1", "--no-psqlrc", "-qAt"]
    result = subprocess.run([*command, *args], env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    return result.stdout


@pytest.fixture
def stack(tmp_path, database):
    """The compose file's own services running here; the infrastructure from the same binaries or stand-ins."""
    ports = {"REDIS_PORT": free_port(), "MINIO_PORT": free_port(), "MEI_SERVICE_FLOWER_PORT": free_port()}
    variables = example_variables(**generated_secrets(), **TEST_VARIABLES, **ports, MEI_SERVICE_DEFAULT_QUEUE=RUN)
    local = LocalStack(load_compose(variables)["services"], volumes=tmp_path)
    # The images' entrypoints, which here have nothing to set up: they run their command.
    shims = tmp_path / "bin"
    shims.mkdir()
    (shims / "docker-entrypoint.sh").write_text('#!/bin/sh\nexec "$@"\n')
    (shims / "docker-entrypoint.sh").chmod(0o755)
    path = f"{shims}{os.pathsep}{BIN}{os.pathsep}{os.environ['PATH']}"
    processes: list[Process] = []

    def start(name: str, command: list[str], env: dict[str, str]) -> Process:
        process = Process(command, tmp_path / f"{name}.log", {"PATH": path, "HOME": str(tmp_path), **env})
        processes.append(process)
        return process

    # postgres: the machine's own server (the published port 5432 reaches it) with a database of this run, set up
    # as the image does: the init script, as POSTGRES_USER in POSTGRES_DB with the container's environment; twice,
    # as running it again must be harmless.
    postgres = local.environment("postgres")
    assert postgres["POSTGRES_DB"] == RUN
    psql("postgres", "-c", f'CREATE DATABASE "{RUN}"')
    try:
        for _ in range(2):
            psql(RUN, "-f", str(ROLES_SQL), env={**os.environ, **postgres}, user=postgres["POSTGRES_USER"])
        subprocess.run(local.healthcheck("postgres"), env={**os.environ, **postgres}, check=True)
        # redis: its entrypoint and command, on its published port, with its volume in a temporary folder, and a
        # user of the test's that reads the ACL log: which commands the service's user was denied.
        admin_password = secrets.token_urlsafe()
        here = ["--bind", "127.0.0.1", "--port", ports["REDIS_PORT"], "--dir", str(tmp_path)]
        here += ["--user", "admin", "on", f">{admin_password}", "~*", "&*", "+@all"]
        admin = redis.Redis(port=int(ports["REDIS_PORT"]), username="admin", password=admin_password)
        start("redis", [*local.argv("redis"), *here], {**local.environment("redis"), "TMPDIR": str(tmp_path)})
        # minio: moto's S3 server stands in (no MinIO binary here), and for minio-init's bucket; it checks no keys.
        start("minio", [str(BIN / "moto_server"), "-H", "127.0.0.1", "-p", ports["MINIO_PORT"]], {})
        s3 = boto3.client(
            "s3",
            endpoint_url=f"http://127.0.0.1:{ports['MINIO_PORT']}",
            aws_access_key_id=variables["MEI_S3_ACCESS_KEY"],
            aws_secret_access_key=variables["MEI_S3_SECRET_KEY"],
            region_name="us-east-1",
        )
        wait_for(lambda: _answers(s3), 30, message="S3 stand-in up")
        s3.create_bucket(Bucket=local.services["minio-init"]["environment"]["MINIO_BUCKET"])
        yield local, start, s3, variables, processes, admin
    finally:
        for process in reversed(processes):
            process.stop(timeout=30)
        psql("postgres", "-c", f'DROP DATABASE IF EXISTS "{RUN}" WITH (FORCE)')
        roles = (MEMBER, variables["DJ_USER"], variables["MEI_DB_MEMBER_ROLE"])
        psql("postgres", "-c", "DROP ROLE IF EXISTS " + ", ".join(f'"{role}"' for role in roles))


def _answers(s3) -> bool:
    try:
        s3.list_buckets()
    except Exception:
        return False
    return True


def test_the_compose_stack_runs_the_demo_end_to_end(stack):
    local, start, s3, variables, processes, redis_admin = stack

    def run_job(name: str, timeout: float, command: list[str] | None = None, env: dict | None = None) -> str:
        job = start(name, command or local.command(name), env or local.environment(name))
        job.process.wait(timeout)
        assert job.process.returncode == 0, f"{name} failed:\n{job.output()}"
        return job.output()

    def healthy(name: str) -> bool:
        check = subprocess.run(local.healthcheck(name), env=_env(local, name), capture_output=True, text=True)
        return check.returncode == 0

    assert "declared mei_service.demo.pipeline.MEI" in run_job("init", timeout=120)
    services = {name: start(name, local.command(name), local.environment(name)) for name in SERVICES}
    for name in services:
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

    # Everything ran as the service's role, which is no superuser and owns what it declared.
    service = variables["DJ_USER"]
    assert psql(RUN, "-c", f"SELECT rolsuper FROM pg_roles WHERE rolname = '{service}'").strip() == "f"
    owners = psql(RUN, "-c", f"SELECT DISTINCT tableowner FROM pg_tables WHERE schemaname LIKE '{SCHEMA_PREFIX}%'")
    assert owners.split() == [service]

    # A lab member, with a login of their own in the members' group and the members' Redis user: adds a seed and
    # enqueues its MEIs (with the scheduler stopped, so that the member's enqueue is the one that queues them),
    # which the workers generate; writes no result and creates nothing.
    services["scheduler"].stop()
    psql(RUN, "-c", f'CREATE ROLE "{MEMBER}" LOGIN IN ROLE "{variables["MEI_DB_MEMBER_ROLE"]}"')
    # A notebook's variables: the scheduler's, with the member's database role and Redis user.
    service_redis = f"{variables['REDIS_USER']}:{variables['REDIS_PASSWORD']}@"
    member_redis = f"{variables['REDIS_MEMBER_USER']}:{variables['REDIS_MEMBER_PASSWORD']}@"
    scheduler = local.environment("scheduler")
    notebook = {name: value.replace(service_redis, member_redis) for name, value in scheduler.items()}
    notebook.update(DJ_USER=MEMBER, DJ_PASS=secrets.token_urlsafe())
    assert member_redis in notebook["MEI_SERVICE_BROKER_URL"]
    python = [sys.executable, "-c"]
    run_job("member-seed", 60, [*python, "from mei.main import MEISeed; MEISeed().insert1({'mei_seed': 7})"], notebook)
    enqueue = ["mei-service", "enqueue", "mei_service.demo.pipeline.MEI", "--wait"]
    restriction = ["--restriction", '{"mei_seed": 7, "neuron_id": [0, 1]}']
    assert "queued 2 keys" in run_job("member-enqueue", 300, [*enqueue, *restriction], notebook)
    refused = run_job("member-refused", 60, [*python, MEMBER_REFUSED], notebook)
    assert refused.count("refused") == 4, refused

    # Celery, Flower and the heartbeats needed no command that the service's Redis user is denied.
    assert redis_admin.acl_log() == []
    secret_values = [variables[name] for name in SECRETS] + [password]
    for process in processes:
        assert not any(secret in process.output() for secret in secret_values), f"a secret in {process.log.name}"


# Run as a lab member: each of these must fail for want of privileges.
MEMBER_REFUSED = """
import datajoint as dj
from mei.main import MEIMethod
from mei_service.demo.pipeline import MEI, Objective
attempts = {
    "a computed row": lambda: Objective().insert1({"neuron_id": 99}, allow_direct_insert=True),
    "deleting a method": lambda: MEIMethod().delete_quick(),
    "a schema": lambda: dj.conn().query('CREATE SCHEMA "member_schema"'),
    "an MEI": lambda: MEI().delete_quick(),
}
for what, attempt in attempts.items():
    try:
        attempt()
        print(what, "allowed")
    except dj.errors.DataJointError as error:
        print(what, "refused" if "permission denied" in str(error) else error)
"""


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
    assert local.argv("minio-init") == ["sh", str(ROOT / "deploy" / "minio" / "init.sh")]
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
    healthy = cli("health", "--database")
    assert healthy.returncode == 0 and healthy.stdout.strip() == "ok: broker, database"
    no_tables = cli("scheduler", MEI_SERVICE_TABLES="")
    assert no_tables.returncode != 0 and "MEI_SERVICE_TABLES" in no_tables.stderr
    bad_batch = cli("worker", MEI_BATCH_SIZE="many")
    assert bad_batch.returncode != 0 and "MEI_BATCH_SIZE must be a positive integer" in bad_batch.stderr


def test_command_line_errors_are_one_line_and_every_command_describes_itself():
    def cli(*args: str) -> subprocess.CompletedProcess:
        command = [sys.executable, "-m", "mei_service.cli", *args]
        # Wide enough that argparse does not wrap the descriptions.
        env = {**os.environ, "COLUMNS": "300"}
        return subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)

    query = ["mei_service.demo.pipeline.MEI", "--where", "no_such_column < 1"]
    failed = cli("status", *query)
    assert failed.returncode == 1 and "Traceback" not in failed.stderr
    last = failed.stderr.strip().splitlines()[-1]
    assert last.startswith("mei-service status: ") and "no_such_column" in last and "--debug" in last
    assert "Traceback" in cli("status", *query, "--debug").stderr
    described = cli("--help").stdout
    assert "``" not in described
    subcommands = next(action for action in parser()._actions if action.dest == "command").choices
    for name, subcommand in subcommands.items():
        helped = cli(name, "--help")
        assert helped.returncode == 0 and f"usage: mei-service {name}" in helped.stdout, name
        assert "``" not in helped.stdout, name
        if subcommand.add_help:  # worker and demo answer --help with their own programs' parsers
            assert subcommand.description in helped.stdout and "--debug" in helped.stdout, name
