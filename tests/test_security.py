"""Attacks by a lab member with database access, a hostile message or web page, each of which must fail.

Threat model (docs/deploy.md): members read everything, insert methods, seeds and nnfabrik entries and
enqueue; they do not get the workers' identity. A row may be written with plain SQL, past every helper.
"""

import os
import secrets
import subprocess
import sys

import experiment
import pytest
import requests
from service import Flower, Process, Workers, wait_for

from mei import policy
from mei.fabrik import Dataset
from mei.main import MEIMethod, MEISeed
from mei.methods import gradient_ascent
from mei.policy import NotAllowedError
from mei.stoppers import NumIterations
from mei_service import cli, client, enqueue, jobs
from mei_service.app import app
from mei_service.demo.pipeline import MEI, TrainedModel
from mei_service.restrictions import RestrictionError
from mei_service.settings import Settings, SettingsError


def shell_component(sentinel) -> dict:
    return {"path": "subprocess.run", "kwargs": {"args": ["touch", str(sentinel)]}}


def hostile_configs(sentinel) -> dict[str, dict]:
    """Method configs that would run a command on whoever generates their MEIs."""
    command = f"touch {sentinel}"
    return {
        "subprocess": experiment.quick_method(initial=shell_component(sentinel)),
        "os.system": experiment.quick_method(initial={"path": "os.system", "kwargs": {"command": command}}),
        "nested": experiment.quick_method(
            initial={
                "path": "mei.import_utils.build_component",
                "kwargs": {"role": "initial", "spec": shell_component(sentinel)},
            }
        ),
        "re-export": experiment.quick_method(
            initial={"path": "mei.methods.build_component", "kwargs": {"role": "x", "spec": shell_component(sentinel)}}
        ),
    }


def insert_as_plain_rows(configs: dict[str, dict]) -> None:
    """The rows as a member could write them with SQL, past ``add_method``'s checks."""
    for name, config in configs.items():
        MEIMethod().insert1({"method_fn": "mei.methods.gradient_ascent", "method_hash": name, "method_config": config})


class TestAllowList:
    @pytest.mark.parametrize("attack", ["subprocess", "os.system", "nested", "re-export"])
    def test_add_method_refuses_code_outside_the_allow_list(self, attack, database, clean_framework_tables, tmp_path):
        sentinel = tmp_path / "ran"
        with pytest.raises(NotAllowedError, match="MEI_ALLOWED_MODULES"):
            MEIMethod().add_method("mei.methods.gradient_ascent", hostile_configs(sentinel)[attack])
        with pytest.raises(NotAllowedError, match="outside the allow-list"):
            MEIMethod().add_method("os.system", {})
        assert len(MEIMethod()) == 0 and not sentinel.exists()

    def test_the_framework_defaults_and_lab_prefixes_pass(self, database, clean_framework_tables):
        config = experiment.quick_method(
            precondition={"path": "mei.legacy.ops.GaussianBlur", "kwargs": {"sigma": 1}},
            stopper={"path": "mymodule.EvaluationThreshold", "kwargs": {"threshold": 1.0}},
            optimizer={"path": "torch.optim.Adam", "kwargs": {"lr": 0.1}},
        )
        MEIMethod().add_method("mei.methods.gradient_ascent", config)
        assert len(MEIMethod()) == 1

    def test_nnfabrik_builders_are_checked_at_insert_and_at_load(self, trained, tmp_path):
        hub = tmp_path / "hub"
        hub.mkdir()
        sentinel = tmp_path / "ran"
        (hub / "hubconf.py").write_text(f"open({str(sentinel)!r}, 'w').close()\ndef model():\n    return None\n")
        config = {"repo_or_dir": str(hub), "model": "model", "source": "local"}
        with pytest.raises(NotAllowedError, match=r"torch\.hub"):
            Dataset().add_entry("torch.hub.load", config, dataset_fabrikant="tester")
        # Written past the helper, and a trained model pointing at it: loading it must not run hubconf.py.
        dataset = {"dataset_fn": "torch.hub.load", "dataset_hash": "hostile"}
        Dataset().insert1(dict(dataset, dataset_config=config, dataset_fabrikant="tester"))
        row = dict(trained["members"], **dataset, seed=experiment.SEEDS[0], score=0.0, output={})
        try:
            TrainedModel().insert1(row, allow_direct_insert=True)
            with pytest.raises(NotAllowedError, match=r"torch\.hub"):
                TrainedModel().load_model({key: row[key] for key in TrainedModel.primary_key})
        finally:
            (Dataset & dataset).delete()
        assert not sentinel.exists()

    def test_populate_refuses_plain_rows_key_by_key(self, trained, clean_framework_tables, tmp_path):
        sentinel = tmp_path / "ran"
        insert_as_plain_rows(hostile_configs(sentinel))
        MEISeed().insert1({"mei_seed": 1})
        MEI().populate(trained["ensemble"], reserve_jobs=True, suppress_errors=True)
        messages = [row["error_message"] for row in (MEI.jobs & "status = 'error'").to_dicts()]
        assert len(messages) == 4 * experiment.DATASET["neurons"] and len(MEI & trained["ensemble"]) == 0
        assert all("outside the allow-list" in message for message in messages)
        assert not sentinel.exists()
        MEI.jobs.delete()

    def test_paths_given_directly_in_python_are_the_callers_own(self, tmp_path, monkeypatch):
        (tmp_path / "notebook_code.py").write_text(
            "import torch\nclass Zeros:\n    def __call__(self, *shape):\n        return torch.zeros(*shape)\n"
        )
        monkeypatch.syspath_prepend(str(tmp_path))
        model = torch_quadratic()
        config = experiment.quick_method(iterations=2, initial={"path": "notebook_code.Zeros"})
        mei, _, _ = gradient_ascent(None, model, config, seed=0, shape=(1, 1, 4, 4))
        assert mei.shape == (1, 1, 4, 4)
        with policy.enforced(), pytest.raises(NotAllowedError, match="notebook_code"):
            gradient_ascent(None, model, config, seed=0, shape=(1, 1, 4, 4))

    def test_sizes_in_rows_are_bounded(self, database, clean_framework_tables, monkeypatch):
        with pytest.raises(NotAllowedError, match="MEI_MAX_N_MEIS"):
            MEIMethod().add_method("mei.methods.gradient_ascent", experiment.quick_method(n_meis=10**6))
        with pytest.raises(policy.ConfigurationError, match="MEI_MAX_ITERATIONS"):
            MEIMethod().add_method("mei.methods.gradient_ascent", experiment.quick_method(iterations=10**9))
        monkeypatch.setenv("MEI_MAX_ITERATIONS", str(10**9))
        MEIMethod().add_method("mei.methods.gradient_ascent", experiment.quick_method(iterations=10**9))
        assert NumIterations(10**10).num_iterations == 10**10  # outside rows, the caller decides


def torch_quadratic():
    import torch
    from conftest import Quadratic

    return Quadratic(torch.zeros(1, 1, 4, 4))


@pytest.fixture(scope="module")
def workers(tmp_path_factory, trained):
    running = Workers(tmp_path_factory.mktemp("workers") / "workers.log", processes=1).wait_ready()
    yield running
    running.stop()


def test_workers_refuse_hostile_rows_and_messages(trained, workers, clean_framework_tables, tmp_path):
    sentinel = tmp_path / "ran"
    insert_as_plain_rows(hostile_configs(sentinel))
    MEISeed().insert1({"mei_seed": 1})
    final = enqueue(MEI & trained["ensemble"], batch_size=4).wait(timeout=120)
    assert final.failed == 4 * experiment.DATASET["neurons"] and final.done == 0
    tracebacks = [stack for _, _, stack in client.errors(MEI, trained["ensemble"])]
    assert all("NotAllowedError" in stack for stack in tracebacks)
    # A message naming a table outside the lab's prefixes, or a path of no Python names.
    for table in ("subprocess.run", "mei.stoppers.NumIterations", "mei_service.demo.pipeline.MEI;x"):
        result = app.send_task("mei_service.generate", args=[table, []], queue=app.conf.task_default_queue)
        with pytest.raises(Exception, match=r"not allowed|outside the allow-list"):
            result.get(timeout=60)
    assert not sentinel.exists()
    MEI.jobs.delete()


class TestRestrictions:
    def test_a_misspelt_attribute_is_refused_not_the_whole_table(self, trained):
        with pytest.raises(RestrictionError, match=r"unknown attributes \['neuron'\].*neuron_id"):
            client.cancel(MEI, {"neuron": 0}, app=app)
        with pytest.raises(RestrictionError, match="all=True"):
            client.cancel(MEI, app=app)
        with pytest.raises(RestrictionError, match="all=True"):
            client.retry(MEI, app=app)

    def test_values_are_bound_never_spliced(self, trained, clean_framework_tables):
        MEIMethod().add_method("mei.methods.gradient_ascent", experiment.quick_method())
        MEISeed().insert([{"mei_seed": 1}, {"mei_seed": 2}])
        for hostile in (["x') OR TRUE OR ('"], "x' OR 'a'='a", ["50%", "it's"]):
            source, _ = jobs.restricted(MEI, {"method_fn": hostile})
            assert len(source) == 0
        ensemble = trained["ensemble"]["ensemble_hash"]
        either = [
            {"ensemble_hash": ensemble, "mei_seed": [1]},
            {"ensemble_hash": ensemble, "mei_seed": 2, "neuron_id": [0, 1]},
        ]
        source, _ = jobs.restricted(MEI, either)
        assert len(source) == experiment.DATASET["neurons"] + 2
        with pytest.raises(RestrictionError, match="number, a string"):
            jobs.restricted(MEI, {"mei_seed": {"$gt": 0}})

    @pytest.mark.parametrize(
        ("arguments", "message"),
        [
            (["cancel"], "--all"),
            (["retry"], "--all"),
            (["cancel", "--restriction", "neuron_id < 100"], "--where"),
            (["status", "--restriction", '{"neuron": 0}'], "neuron_id"),
            (["enqueue", "--batch-size", str(10**9)], "MEI_SERVICE_MAX_BATCH_SIZE"),
            (["enqueue", "--batch-size", "-1"], "1 to 4096"),
            (["scheduler", "--batch-size", "0"], "1 to 4096"),
        ],
    )
    def test_the_command_line_refuses_with_one_line(self, trained, capsys, arguments, message):
        code = cli.main([arguments[0], "mei_service.demo.pipeline.MEI", *arguments[1:]])
        error = capsys.readouterr().err
        assert code == 2 and message in error and "Traceback" not in error


class TestSecrets:
    def test_settings_never_show_passwords(self):
        settings = Settings(broker_url="redis://:hunter2@redis:6379/0", result_backend="redis://u:hunter2@r/1")
        assert "hunter2" not in repr(settings) and "hunter2" not in str(settings)
        assert "mei_settings" not in app.conf

    def test_placeholders_and_malformed_flower_credentials_are_refused(self):
        with pytest.raises(SettingsError, match="placeholder"):
            Settings.from_env({"MEI_SERVICE_BROKER_URL": "redis://:change-me@redis:6379/0"})
        with pytest.raises(SettingsError, match="MEI_ALLOWED_MODULES"):
            Settings.from_env({"MEI_SERVICE_ALLOWED_MODULES": "my_lab"})
        for malformed in ("lab:Pw,x", "lab", "lab:", ":pw", "lab:pw,", " lab:pw"):
            with pytest.raises(SettingsError, match="user:password"):
                Settings.from_env({"MEI_SERVICE_FLOWER_BASIC_AUTH": malformed})
        assert Settings.from_env({"MEI_SERVICE_FLOWER_BASIC_AUTH": "a:b,c:d"}).flower_basic_auth == "a:b,c:d"


def test_no_password_in_inspect_conf_flower_or_logs(trained, tmp_path):
    password = secrets.token_urlsafe(16)
    port = 22000 + os.getpid() % 10000
    server = subprocess.Popen(
        ["redis-server", "-"], stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, start_new_session=True
    )
    server.stdin.write(f'port {port}\nbind 127.0.0.1\nsave ""\nappendonly no\nrequirepass {password}\n'.encode())
    server.stdin.close()
    env = dict(
        os.environ,
        MEI_SERVICE_BROKER_URL=f"redis://:{password}@127.0.0.1:{port}/0",
        MEI_SERVICE_RESULT_BACKEND=f"redis://:{password}@127.0.0.1:{port}/1",
        MEI_SERVICE_FLOWER_BASIC_AUTH=f"lab:{secrets.token_urlsafe(12)}",
    )
    auth = tuple(env["MEI_SERVICE_FLOWER_BASIC_AUTH"].split(":"))
    worker = Workers(tmp_path / "worker.log", processes=1, env=env)
    flower = Flower(tmp_path / "flower.log", port + 1, env)
    command = [sys.executable, "-m", "mei_service.cli", "scheduler", "mei_service.demo.pipeline.MEI", "--interval", "1"]
    scheduler = Process(command, tmp_path / "scheduler.log", env)
    try:
        worker.wait_ready()
        wait_for(lambda: "using database" in scheduler.output(), 60, message="the scheduler's start")
        inspected = subprocess.run(
            [sys.executable, "-m", "celery", "-A", "mei_service.app", "inspect", "conf", "--timeout", "10"],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert "broker_url" in inspected.stdout and "visibility_timeout" in inspected.stdout, inspected.stdout
        wait_for(lambda: flower.answers(auth), 60, message="Flower up")
        listed = wait_for(lambda: flower.get("/api/workers?refresh=1", auth).text, 60, message="workers listed")
        name = next(iter(flower.get("/api/workers", auth).json()))
        pages = [listed, *(flower.get(path, auth).text for path in ("/", "/workers", "/broker", f"/worker/{name}"))]
        seen = [inspected.stdout, inspected.stderr, *pages, worker.output(), flower.output(), scheduler.output()]
        assert "redis://:********@127.0.0.1" in scheduler.output(), "the scheduler says which broker, masked"
        assert not [text for text in seen if password in text or auth[1] in text]
    finally:
        scheduler.stop()
        flower.stop()
        worker.stop()
        server.kill()
        server.wait(10)


def test_flower_always_authenticates_and_refuses_cross_site_requests(tmp_path):
    bare = {key: value for key, value in os.environ.items() if key != "MEI_SERVICE_FLOWER_BASIC_AUTH"}
    for arguments, extra in ((["--local"], {}), ([], {"MEI_SERVICE_FLOWER_BASIC_AUTH": "lab:Pw,x"})):
        refused = subprocess.run(
            [sys.executable, "-m", "mei_service.cli", "flower", *arguments],
            env=dict(bare, **extra),
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert refused.returncode == 2 and "MEI_SERVICE_FLOWER_BASIC_AUTH" in refused.stderr
    password = secrets.token_urlsafe(12)
    # Even when asked for an open API through Flower's own variable, it stays closed.
    env = dict(bare, MEI_SERVICE_FLOWER_BASIC_AUTH=f"lab:{password}", FLOWER_UNAUTHENTICATED_API="true")
    flower = Flower(tmp_path / "flower.log", 23000 + os.getpid() % 10000, env, "--local")
    auth = ("lab", password)
    try:
        wait_for(lambda: flower.answers(auth), 60, message="Flower up")
        anonymous = flower.get("/api/workers", auth=None)
        assert anonymous.status_code == 401 and "Access-Control-Allow-Origin" not in anonymous.headers
        assert requests.get(flower.url + "/api/workers", auth=("x", ""), timeout=10).status_code == 401
        shutdown = flower.url + "/api/worker/shutdown/nobody@nowhere"
        for headers in ({"Origin": "http://evil.example"}, {"Sec-Fetch-Site": "cross-site"}):
            answer = requests.post(shutdown, auth=auth, headers=headers, timeout=10)
            assert answer.status_code == 403 and "Access-Control-Allow-Origin" not in answer.headers
    finally:
        flower.stop()


def test_workers_refuse_rows_beyond_the_size_limits(trained, workers, clean_framework_tables):
    insert_as_plain_rows(
        {"huge-n-meis": experiment.quick_method(n_meis=10**6), "endless": experiment.quick_method(iterations=10**9)}
    )
    MEISeed().insert1({"mei_seed": 1})
    final = enqueue(MEI & trained["ensemble"]).wait(timeout=120)
    neurons = experiment.DATASET["neurons"]
    assert (final.failed, final.done) == (2 * neurons, 0)
    messages = {key["method_hash"]: message for key, message, _ in client.errors(MEI, trained["ensemble"])}
    assert "MEI_MAX_N_MEIS" in messages["huge-n-meis"] and "MEI_MAX_ITERATIONS" in messages["endless"]
    MEI.jobs.delete()
