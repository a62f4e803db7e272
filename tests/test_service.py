"""The distributed service with real processes: Redis, PostgreSQL, Celery workers and Flower."""

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import replace

import experiment
import pytest
import redis
import seed_pipeline
import torch
from service import Flower, Workers, wait_for

import mei_service
from mei.main import MEIMethod, MEISeed
from mei.methods import gradient_ascent
from mei.policy import NotAllowedError
from mei_service import client, enqueue, jobs, scheduler, status
from mei_service.app import TASK_NAME, app, create_app
from mei_service.demo.pipeline import MEI, Objective
from mei_service.settings import Settings, SettingsError
from workers.runtime import default_queues


@pytest.fixture(scope="module")
def workers(tmp_path_factory, trained):
    running = Workers(tmp_path_factory.mktemp("workers") / "workers.log", processes=2).wait_ready()
    yield running
    running.stop()


def add_method(iterations=20, **overrides):
    return MEIMethod().add_method("mei.methods.gradient_ascent", experiment.quick_method(iterations, **overrides))


def add_paced_method(seconds):
    return MEIMethod().add_method("mymodule.paced_ascent", experiment.quick_method(20, seconds=seconds))


def neurons():
    return experiment.DATASET["neurons"]


def test_the_seed_tables_populated_through_the_service(trained, workers, clean_framework_tables):
    experiment.reset_seed_tables(trained)
    seed_pipeline.TrainedEnsembleModel().create_ensemble(trained["members"], comment="My ensemble")
    seed_pipeline.Objective().insert(
        [dict(trained["dataset"], neuron_id=n, output_unit=n) for n in range(neurons())], allow_direct_insert=True
    )
    method = add_method(iterations=50)
    MEISeed().insert1({"mei_seed": 42})
    submission = enqueue(seed_pipeline.MEI, batch_size=3)
    assert len(submission.keys) == neurons() and len(submission.task_ids) == 2
    final = submission.wait(timeout=120)
    assert final.done == neurons() and final.failed == 0
    row = (seed_pipeline.MEI & method & {"neuron_id": 2}).fetch1()
    assert (
        isinstance(row["mei"], torch.Tensor) and row["output"]["mei.objectives.EvaluationObjective"]["times"][-1] == 50
    )
    assert seed_pipeline.MEI.jobs.progress()["total"] == 0
    assert seed_pipeline.MEI().progress() == (0, neurons())
    table_status = status(seed_pipeline.MEI)
    assert (table_status.total, table_status.done, table_status.queued, table_status.running) == (
        neurons(),
        neurons(),
        0,
        0,
    )


def test_a_task_generates_its_keys_in_one_batch_each_equal_to_its_one_at_a_time_result(
    trained, workers, clean_framework_tables
):
    add_method(iterations=30, optimizer={"path": "torch.optim.Adam", "kwargs": {"lr": 0.1}})
    MEISeed().insert([{"mei_seed": seed} for seed in (1, 2)])
    log_before = len(workers.output())
    submission = enqueue(MEI & trained["ensemble"], batch_size=2 * neurons())
    assert len(submission.task_ids) == 1
    final = submission.wait(timeout=120)
    assert (final.done, final.failed) == (2 * neurons(), 0)
    assert f"generating {2 * neurons()} MEIs in batches of up to 32" in workers.output()[log_before:]
    rows = (MEI & trained["ensemble"]).to_dicts()
    assert len({(row["neuron_id"], row["mei_seed"]) for row in rows}) == 2 * neurons()
    for row in rows:
        key = {name: row[name] for name in MEI.primary_key}
        mei, score, output = MEI().make_compute(key, row["mei_seed"])
        assert torch.allclose(row["mei"], mei, atol=1e-5, rtol=0)
        assert row["score"] == pytest.approx(score, abs=1e-5)
        log, expected = (
            row["output"]["mei.objectives.EvaluationObjective"],
            output["mei.objectives.EvaluationObjective"],
        )
        assert log["times"] == expected["times"]
        assert log["values"] == pytest.approx(expected["values"], abs=1e-5)


def test_enqueueing_the_same_keys_twice_at_once_sends_each_key_once(trained, workers, clean_framework_tables):
    add_method()
    MEISeed().insert([{"mei_seed": seed} for seed in range(5)])
    restriction = ["--restriction", json.dumps(trained["ensemble"])]
    command = [sys.executable, "-m", "mei_service.cli", "enqueue", "mei_service.demo.pipeline.MEI", *restriction]
    enqueuers = [subprocess.Popen(command, stdout=subprocess.PIPE, text=True) for _ in range(2)]
    outputs = [enqueuer.communicate(timeout=120)[0] for enqueuer in enqueuers]
    queued = [int(output.split("queued ")[1].split()[0]) for output in outputs]
    assert sum(queued) == 5 * neurons(), outputs
    wait_for(lambda: status(MEI & trained["ensemble"]).finished, 120, message="all keys done")
    assert len(MEI & trained["ensemble"]) == 5 * neurons()
    assert status(MEI & trained["ensemble"]).failed == 0
    assert enqueue(MEI & trained["ensemble"]).keys == []


def test_a_lab_table_whose_make_fetch_returns_arrays_is_stored_as_populate_would(
    trained, workers, clean_framework_tables
):
    from lab_tables import ArrayInputsMEI

    add_method()
    MEISeed().insert1({"mei_seed": 1})
    final = enqueue(ArrayInputsMEI & trained["ensemble"]).wait(timeout=120)
    assert (final.done, final.failed) == (neurons(), 0), final


def test_the_service_generates_video_and_diverse_meis_equal_to_one_at_a_time(trained, workers, clean_framework_tables):
    from lab_tables import VideoMEI, VideoObjective, video_model

    VideoObjective().insert([dict(trained["dataset"], neuron_id=unit) for unit in range(4)], skip_duplicates=True)
    low_pass = {"path": "mei.preconditions.TemporalLowPass", "kwargs": {"sigma": 0.5}}
    video = experiment.quick_method(10, precondition=low_pass)
    diverse = dict(experiment.quick_method(10), n_meis=3, diversity={"fraction": 0.8, "weight": 1.0})
    video_method = MEIMethod().add_method("mei.methods.gradient_ascent", video)
    diverse_method = MEIMethod().add_method("mei.methods.diverse_gradient_ascent", diverse)
    MEISeed().insert1({"mei_seed": 2})
    final = enqueue(VideoMEI & trained["ensemble"]).wait(timeout=180)
    assert (final.done, final.failed) == (8, 0), final
    dataloaders, model = video_model()
    video_keys = (VideoMEI & video_method).keys()
    assert len(video_keys) == 4
    for key in video_keys:
        mei, score = (VideoMEI & key).fetch1("mei", "score")
        alone = gradient_ascent(dataloaders, VideoObjective().get_objective(model, key), video, 2)
        assert mei.shape == (1, 1, 6, 8, 8)
        assert torch.allclose(mei, alone[0], atol=1e-5) and score == pytest.approx(alone[1], abs=1e-5)
    for images, output in zip(*(VideoMEI & diverse_method).to_arrays("mei", "output"), strict=True):
        assert images.shape == (3, 1, 6, 8, 8)
        assert min(output["diversity"]["activations"]) >= output["diversity"]["floor"]


def test_kept_success_records_count_as_done_and_a_deleted_row_is_queued_again(
    trained, tmp_path, clean_framework_tables
):
    # A queue of its own: the module's workers do not keep success records.
    queue = f"{app.conf.task_default_queue}_keep"
    env = dict(os.environ, DJ_JOBS_KEEP_COMPLETED="true", MEI_SERVICE_DEFAULT_QUEUE=queue)
    keeping = Workers(tmp_path / "keeping.log", env=env).wait_ready()
    try:
        add_method()
        MEISeed().insert1({"mei_seed": 1})
        final = enqueue(MEI & trained["ensemble"], queue=queue).wait(timeout=120)
        assert (final.done, final.failed, final.not_queued) == (neurons(), 0, 0)
        assert len(MEI.jobs & "status = 'success'") == neurons()
        (MEI & trained["ensemble"] & {"neuron_id": 1}).delete()
        assert status(MEI & trained["ensemble"]).not_queued == 1
        again = enqueue(MEI & trained["ensemble"], queue=queue)
        assert [key["neuron_id"] for key in again.keys] == [1]
        assert again.wait(timeout=120).done == 1 and len(MEI & trained["ensemble"]) == neurons()
    finally:
        keeping.stop()
        MEI.jobs.delete_quick()


def test_a_failing_key_is_recorded_and_not_retried_while_the_batch_completes(trained, workers, clean_framework_tables):
    broken = dict(trained["dataset"], neuron_id=99)
    Objective().insert1(dict(broken, output_unit=999), allow_direct_insert=True)
    try:
        add_method()
        MEISeed().insert1({"mei_seed": 1})
        submission = enqueue(MEI & trained["ensemble"], batch_size=10)
        assert len(submission.task_ids) == 1
        final = submission.wait(timeout=120)
        assert (final.done, final.failed) == (neurons(), 1)
        [(key, message)] = submission.errors()
        assert key["neuron_id"] == 99 and message.startswith("IndexError")
        error = (MEI.jobs & broken).fetch1()
        assert "Traceback" in error["error_stack"] and "mei/modules.py" in error["error_stack"]
        result = app.AsyncResult(submission.task_ids[0])
        with pytest.raises(Exception, match=f"1 of {neurons() + 1} keys failed \\(done {neurons()}, failed 1"):
            result.get(timeout=30)
        assert result.state == "FAILURE", "a Flower user sees that keys failed"
        assert result.retries in (0, None)
    finally:
        (MEI.jobs & broken).delete_quick()
        (Objective & broken).delete_quick()


def test_a_bad_method_config_fails_every_key_fast(trained, workers, clean_framework_tables):
    config = experiment.quick_method()
    config["optimizer"] = {"path": "torch.optim.SGD", "kwargs": {"learning_rate": 1.0}}
    MEIMethod().insert1({"method_fn": "mei.methods.gradient_ascent", "method_hash": "bad", "method_config": config})
    MEISeed().insert1({"mei_seed": 1})
    final = enqueue(MEI & trained["ensemble"]).wait(timeout=60)
    assert (final.done, final.failed) == (0, neurons())
    assert all("component 'optimizer' could not be built" in message for _, message in final.errors)


def test_a_worker_process_killed_mid_key_is_redelivered_and_completes_once(trained, tmp_path, clean_framework_tables):
    lone = Workers(tmp_path / "worker.log").wait_ready()
    try:
        add_paced_method(seconds=2)
        MEISeed().insert1({"mei_seed": 1})
        submission = enqueue(MEI & trained["ensemble"], batch_size=neurons())
        [task_id] = submission.task_ids
        wait_for(lambda: app.AsyncResult(task_id).state == "PROGRESS", 60, message="task running")
        [pid] = {row["pid"] for row in (MEI.jobs & "status = 'reserved'").to_dicts()}
        os.kill(pid, signal.SIGKILL)
        final = submission.wait(timeout=120)
        assert (final.done, final.failed) == (neurons(), 0)
        assert len(MEI & trained["ensemble"]) == neurons()
        assert "WorkerLostError" in lone.output() or "Process" in lone.output()
    finally:
        lone.stop()


@pytest.mark.slow
def test_a_dead_worker_node_gives_its_keys_back_to_the_scheduler(trained, tmp_path, clean_framework_tables):
    from mei_service.scheduler import run_daemon

    doomed = Workers(tmp_path / "doomed.log").wait_ready()
    add_paced_method(seconds=1)
    MEISeed().insert1({"mei_seed": 1})
    submission = enqueue(MEI & trained["ensemble"], batch_size=neurons())
    wait_for(lambda: app.AsyncResult(submission.task_ids[0]).state == "PROGRESS", 60, message="task running")
    doomed.signal(signal.SIGKILL)
    killed = time.monotonic()
    rescuer = Workers(tmp_path / "rescuer.log").wait_ready()
    stop = threading.Event()
    daemon = threading.Thread(
        target=run_daemon, args=(app, [MEI], trained["ensemble"]), kwargs={"interval": 1, "stop": stop}
    )
    daemon.start()
    try:
        wait_for(lambda: len(MEI & trained["ensemble"]) == neurons(), 120, message="keys recovered")
        recovery = time.monotonic() - killed
        print(f"recovered {neurons()} keys {recovery:.1f} s after the worker node died")
        assert recovery < 60
        assert status(MEI & trained["ensemble"]).failed == 0
    finally:
        stop.set()
        daemon.join()
        rescuer.stop()


def test_cancel_withdraws_queued_keys_and_stops_running_ones(trained, workers, clean_framework_tables):
    add_paced_method(seconds=3)
    MEISeed().insert([{"mei_seed": seed} for seed in range(3)])
    submission = enqueue(MEI & trained["ensemble"], batch_size=2)
    wait_for(lambda: submission.status().running > 0, 60, message="a key running")
    submission.cancel()
    done_at_cancel = len(MEI & trained["ensemble"])
    time.sleep(5)
    assert len(MEI & trained["ensemble"]) == done_at_cancel < len(submission.keys)
    after = submission.status()
    assert after.queued == after.running == 0 and after.cancelled == len(submission.keys) - done_at_cancel
    MEIMethod().delete()
    add_method()
    assert enqueue(MEI & trained["ensemble"]).wait(timeout=120).done == 3 * neurons()


def test_tables_outside_the_allow_list_are_refused_before_import(trained, workers, tmp_path):
    marker = tmp_path / "imported"
    module = tmp_path / "rogue_tables.py"
    module.write_text(f"open({str(marker)!r}, 'w').close()\nMEI = None\n")
    with pytest.raises(NotAllowedError, match="MEI_ALLOWED_MODULES"):
        client.enqueue(type("MEI", (MEI,), {"__module__": "rogue_tables"}))
    result = app.send_task(TASK_NAME, args=["rogue_tables.MEI", []], queue=app.conf.task_default_queue)
    with pytest.raises(Exception, match="outside the allow-list"):
        result.get(timeout=60)
    assert not marker.exists()


def test_status_command_prints_counts_and_latest_errors(trained, workers, clean_framework_tables):
    config = experiment.quick_method()
    config["initial"] = {"path": "mei.initial.Missing"}
    MEIMethod().insert1({"method_fn": "mei.methods.gradient_ascent", "method_hash": "missing", "method_config": config})
    MEISeed().insert1({"mei_seed": 1})
    command = [sys.executable, "-m", "mei_service.cli"]
    table = ["mei_service.demo.pipeline.MEI", "--restriction", json.dumps(trained["ensemble"])]
    queued = subprocess.run([*command, "enqueue", *table, "--wait"], capture_output=True, text=True)
    assert f"queued {neurons()} keys" in queued.stdout
    shown = subprocess.run([*command, "status", *table, "--errors", "1"], capture_output=True, text=True)
    assert f"failed {neurons()}" in shown.stdout
    # One line for the one message the keys share, with its count.
    [group] = [line for line in shown.stdout.splitlines() if "not found" in line]
    assert group.strip().startswith(f"{neurons()} failed: ") and "'mei.initial.Missing'" in group
    listed = subprocess.run([*command, "errors", *table, "--limit", "2"], capture_output=True, text=True)
    shown_keys = [line for line in listed.stdout.splitlines() if line.startswith('{"method_fn"')]
    assert listed.returncode == 0 and len(shown_keys) == 2 and "Traceback (most recent call last)" in listed.stdout
    assert "2 failed keys shown" in listed.stdout and all('"neuron_id"' in line for line in shown_keys)
    as_json = json.loads(subprocess.run([*command, "status", *table, "--json"], capture_output=True).stdout)
    assert as_json["failed"] == neurons() and as_json["error_groups"][0]["keys"] == neurons()
    [(key, message, stack)] = mei_service.errors(MEI & trained["ensemble"], limit=1)
    assert "mei.initial.Missing" in message and "Traceback" in stack and key["mei_seed"] == 1


def test_status_reports_throughput_and_the_time_to_go_while_keys_run(trained, workers, clean_framework_tables):
    add_paced_method(seconds=1)
    MEISeed().insert([{"mei_seed": seed} for seed in (1, 2, 3)])
    query = MEI & trained["ensemble"]
    submission = enqueue(query, batch_size=1)
    assert status(query).meis_per_hour == 0, "nothing finished yet"

    def halfway() -> client.Status | None:
        now = status(query)
        return now if now.done >= 2 and now.to_go >= 2 else None

    found = wait_for(halfway, 120)
    assert found.meis_per_hour > 0 and found.seconds_left > 0
    assert "MEIs per hour over the last 10 min" in str(found) and f"{found.to_go} to go, about" in str(found)
    command = [sys.executable, "-m", "mei_service.cli", "status", "mei_service.demo.pipeline.MEI", "--json"]
    restriction = ["--restriction", json.dumps(trained["ensemble"])]
    shown = json.loads(subprocess.run([*command, *restriction], capture_output=True, check=True).stdout)
    assert shown["meis_per_hour"] > 0 and shown["total"] == 3 * neurons()
    assert submission.wait(timeout=120).done == 3 * neurons()
    # Each row records when its generation began and how long it took, as populate records it.
    durations = MEI.connection.query(
        f"SELECT _job_duration FROM {MEI.full_table_name} WHERE _job_start_time IS NOT NULL"
    ).fetchall()
    assert len(durations) == 3 * neurons() and all(duration >= 1 for (duration,) in durations)


def test_the_retries_after_a_lost_connection_outlast_a_database_restart():
    from workers.tasks import retry_countdown, settings

    shortest = 0
    for retries in range(settings.max_retries):
        ceiling = min(2 ** (retries + 1), settings.retry_backoff_max)
        waits = {retry_countdown(retries) for _ in range(200)}
        assert ceiling // 2 <= min(waits) and max(waits) <= ceiling
        assert len(waits) > 1, "the wait is jittered"
        shortest += min(waits)
    assert shortest >= 15, "full jitter could spend every retry within a database restart"


def test_every_command_finds_the_local_services_and_says_which_it_uses(trained, tmp_path):
    # A new user's shell after the demo: no DJ_* variable and no store location set.
    env = {name: value for name, value in os.environ.items() if not name.startswith("DJ_")}
    env.pop("MEI_STORE_LOCATION")
    env["HOME"] = str(tmp_path)
    command = [sys.executable, "-m", "mei_service.cli", "status", "mei_service.demo.pipeline.MEI"]
    shown = subprocess.run(command, env=env, capture_output=True, text=True)
    assert shown.returncode == 0, shown.stderr
    assert "total 0: done 0" in shown.stdout
    store = tmp_path / ".mei" / "store"
    used = f"using database postgres@127.0.0.1:5432, broker redis://127.0.0.1:6379/0, store file:{store}"
    assert used in shown.stderr
    notebook = [sys.executable, "-c", "import mei_service, mei.database as d; print(d.store_description())"]
    found = subprocess.run(notebook, env=env, capture_output=True, text=True, check=True)
    assert found.stdout.strip() == f"file:{store}", "a notebook, the demo and the CLI share one store"


def test_waits_follow_keys_queued_before_and_exits_say_whether_keys_failed(trained, workers, clean_framework_tables):
    add_paced_method(seconds=1)
    MEISeed().insert1({"mei_seed": 1})
    earlier = enqueue(MEI & trained["ensemble"])
    assert len(earlier.keys) == neurons()
    command = [sys.executable, "-m", "mei_service.cli"]
    table = ["mei_service.demo.pipeline.MEI", "--restriction", json.dumps(trained["ensemble"])]
    waited = subprocess.run([*command, "enqueue", *table, "--wait"], capture_output=True, text=True, timeout=180)
    assert "queued 0 keys" in waited.stdout, "the keys were queued before"
    assert f"done {neurons()}, queued 0, running 0, failed 0" in waited.stdout, waited.stdout
    assert waited.returncode == 0

    config = experiment.quick_method(3)
    config["initial"] = {"path": "mei.initial.Missing"}
    MEIMethod().insert1({"method_fn": "mei.methods.gradient_ascent", "method_hash": "missing", "method_config": config})
    failing = subprocess.run([*command, "enqueue", *table, "--wait"], capture_output=True, text=True, timeout=180)
    assert f"failed {neurons()}" in failing.stdout and failing.returncode == 1
    again = subprocess.run([*command, "retry", *table, "--wait"], capture_output=True, text=True, timeout=180)
    assert f"queued {neurons()} keys again" in again.stdout and again.returncode == 1


def test_keys_that_could_not_be_sent_are_given_back_and_sent_by_the_next_round(
    trained, workers, clean_framework_tables
):
    add_method()
    MEISeed().insert1({"mei_seed": 1})
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        dead_port = probe.getsockname()[1]
    unreachable = create_app(replace(Settings.from_env(), broker_url=f"redis://127.0.0.1:{dead_port}/0"))
    try:
        with pytest.raises(Exception, match=r"(?i)connect"):
            scheduler.enqueue(unreachable, MEI, trained["ensemble"])
        counts = jobs.count_restricted(MEI, trained["ensemble"])
        assert (counts["queued"], counts["unqueued"]) == (0, neurons()), "recorded, then given back"
        # What the scheduler daemon's next round does: the keys are missing or unqueued, and sent.
        assert len(scheduler.enqueue(app, MEI, trained["ensemble"]).keys) == neurons()
        assert client.follow(MEI & trained["ensemble"], timeout=120).done == neurons()
    finally:
        (MEI.jobs & trained["ensemble"]).delete_quick()


def test_keys_left_by_a_finished_task_are_failed_or_given_back_by_the_scheduler(trained, clean_framework_tables):
    add_method()
    MEISeed().insert1({"mei_seed": 1})
    keys = jobs.missing_keys(MEI, trained["ensemble"])
    failed_task, succeeded_task = str(uuid.uuid4()), str(uuid.uuid4())
    try:
        jobs.mark_queued(MEI, {failed_task: keys[:1], succeeded_task: keys[1:]}, priority=5)
        app.backend.store_result(failed_task, ValueError("the model cannot be loaded"), "FAILURE")
        app.backend.store_result(succeeded_task, {"done": 0}, "SUCCESS")
        assert len(scheduler.recover(app, MEI)) == len(keys)
        counts = jobs.count_restricted(MEI, trained["ensemble"])
        assert (counts["failed"], counts["unqueued"], counts["queued"]) == (1, len(keys) - 1, 0)
        [(_, message, _)] = client.errors(MEI & trained["ensemble"])
        assert message.startswith("task failed: ValueError") and "the model cannot be loaded" in message
    finally:
        (MEI.jobs & trained["ensemble"]).delete_quick()


def test_an_idle_worker_stops_on_sigterm_without_waiting_for_the_soft_shutdown(tmp_path):
    env = dict(os.environ, MEI_SERVICE_SOFT_SHUTDOWN_TIMEOUT="300")
    idle = Workers(tmp_path / "idle.log", env=env).wait_ready()
    idle.stop(timeout=60, group=False)  # SIGTERM to the main process, as an orchestrator sends it
    assert idle.process.returncode == 0, "it exited by itself, not killed after the timeout"
    assert "Initiating Soft Shutdown" not in idle.output()


def test_keys_of_a_cuda_method_go_only_to_the_gpu_workers_queue(trained, workers, clean_framework_tables):
    settings = app.mei_settings
    MEIMethod().add_method("mei.methods.gradient_ascent", experiment.quick_method(device="cuda"))
    MEIMethod().add_method("mei.methods.gradient_ascent", experiment.quick_method(device="cpu"))
    MEISeed().insert1({"mei_seed": 1})
    broker = redis.Redis.from_url(settings.broker_url)
    submission = enqueue(MEI & trained["ensemble"])
    where = f"({neurons()} to {settings.default_queue}, {neurons()} to {settings.gpu_queue})"
    assert str(submission.enqueued) == f"queued {2 * neurons()} keys in 2 tasks {where}"
    try:

        def cpu_keys_done() -> client.Status | None:
            now = submission.status()
            return now if now.done == neurons() else None

        final = wait_for(cpu_keys_done, 120)
        assert (final.queued, final.failed) == (neurons(), 0), "the CPU workers took only the CPU method's keys"
        gpu_lists = list(broker.scan_iter(match=f"{settings.gpu_queue}*", _type="list"))
        assert gpu_lists, f"the CUDA method's task waits in {settings.gpu_queue}"
        waiting = {json.loads(raw)["headers"]["id"] for name in gpu_lists for raw in broker.lrange(name, 0, -1)}
        assert len(waiting) == 1 and waiting <= set(submission.task_ids), "one task: the CUDA method's 4 keys"
    finally:
        submission.cancel()
        for name in broker.scan_iter(match=f"{settings.gpu_queue}*"):
            broker.delete(name)
    assert default_queues(settings, ["0"]) == f"{settings.default_queue},{settings.gpu_queue}"
    assert default_queues(settings, []) == settings.default_queue


def test_time_limits_must_fit_in_the_visibility_timeout():
    with pytest.raises(SettingsError, match="longer than MEI_SERVICE_VISIBILITY_TIMEOUT=600"):
        Settings.from_env({"MEI_SERVICE_VISIBILITY_TIMEOUT": "600", "MEI_SERVICE_TASK_TIME_LIMIT": "900"})
    derived = Settings.from_env({"MEI_SERVICE_VISIBILITY_TIMEOUT": "3600"})
    assert derived.hard_time_limit + derived.retry_backoff_max < derived.visibility_timeout
    assert app.conf.task_time_limit == Settings.from_env().hard_time_limit
    env = dict(os.environ, MEI_SERVICE_VISIBILITY_TIMEOUT="100", MEI_SERVICE_TASK_TIME_LIMIT="200")
    started = subprocess.run(
        [sys.executable, "-m", "celery", "-A", "mei_service.app", "worker"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert started.returncode != 0 and "MEI_SERVICE_VISIBILITY_TIMEOUT=100" in started.stderr


def test_flower_lists_workers_and_tasks_with_progress(trained, workers, tmp_path, clean_framework_tables):
    refused = subprocess.run([sys.executable, "-m", "mei_service.cli", "flower"], capture_output=True, text=True)
    assert refused.returncode == 2 and "MEI_SERVICE_FLOWER_BASIC_AUTH" in refused.stderr
    port = 21000 + os.getpid() % 10000
    env = dict(os.environ, MEI_SERVICE_FLOWER_BASIC_AUTH="lab:s3cret")
    flower = Flower(tmp_path / "flower.log", port, env)
    try:
        auth = ("lab", "s3cret")
        wait_for(lambda: flower.answers(auth), 60, message="Flower up")
        assert flower.get("/api/workers", auth=None).status_code == 401
        wait_for(lambda: len(flower.get("/api/workers?refresh=1", auth).json()) >= 2, 60, message="workers listed")
        add_paced_method(seconds=1)
        MEISeed().insert1({"mei_seed": 1})
        submission = enqueue(MEI & trained["ensemble"], batch_size=2)
        tasks = wait_for(lambda: _tasks_with_progress(flower, auth, submission.task_ids), 60, message="progress shown")
        task = tasks[0]
        assert task["name"] == TASK_NAME and "mei_service.demo.pipeline.MEI" in task["args"]
        assert task["state"] == "PROGRESS" and "iteration" in task["result"]
        detail = flower.get(f"/api/task/result/{task['uuid']}", auth).json()
        assert detail["state"] in ("PROGRESS", "SUCCESS")
        submission.wait(timeout=120)
        assert "s3cret" not in flower.output()
    finally:
        flower.stop()


def _tasks_with_progress(flower, auth, task_ids):
    tasks = flower.get("/api/tasks", auth).json()
    return [task for task_id, task in tasks.items() if task_id in task_ids and task["state"] == "PROGRESS"]


def test_the_control_plane_never_imports_the_data_plane():
    import ast
    from pathlib import Path

    import mei_service

    for path in Path(mei_service.__file__).parent.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [alias.name for alias in node.names] if isinstance(node, ast.Import) else []
            if isinstance(node, ast.ImportFrom) and node.level == 0:
                names = [node.module or ""]
            assert not [name for name in names if name.split(".")[0] == "workers"], path


@pytest.mark.slow
def test_a_stopped_worker_returns_its_unfinished_keys_to_the_queue(trained, tmp_path, clean_framework_tables):
    stopping = Workers(tmp_path / "stopping.log").wait_ready()
    add_paced_method(seconds=4)
    MEISeed().insert1({"mei_seed": 1})
    submission = enqueue(MEI & trained["ensemble"], batch_size=neurons())
    wait_for(lambda: app.AsyncResult(submission.task_ids[0]).state == "PROGRESS", 60, message="task running")
    stopped = time.monotonic()
    stopping.stop(timeout=60, group=False)
    seconds = time.monotonic() - stopped
    print(f"worker stopped {seconds:.1f} s after SIGTERM")
    assert seconds < 10, "a stopped worker waits the soft-shutdown timeout, not for its whole batch (16 s)"
    assert len(MEI & trained["ensemble"]) < neurons()
    successor = Workers(tmp_path / "successor.log").wait_ready()
    try:
        final = submission.wait(timeout=120)
        assert (final.done, final.failed) == (neurons(), 0)
    finally:
        successor.stop()


@pytest.mark.slow
def test_a_lost_database_is_retried_with_backoff_until_it_returns(tmp_path):
    from service import DisposablePostgres

    port = 25000 + os.getpid() % 5000
    database = DisposablePostgres(port)
    database.start()
    prefix = f"{os.environ['MEI_SERVICE_DEFAULT_QUEUE']}_lost"
    env = dict(
        os.environ,
        DJ_PORT=str(port),
        MEI_SCHEMA=f"{prefix}_mei",
        MEI_FABRIK_SCHEMA=f"{prefix}_fabrik",
        MEI_DEMO_SCHEMA=f"{prefix}_demo",
        MEI_STORE_LOCATION=str(tmp_path / "store"),
        MEI_SERVICE_DEFAULT_QUEUE=prefix,
    )
    setup = (
        "import experiment\n"
        "from mei.main import MEIMethod, MEISeed\n"
        "trained = experiment.fill()\n"
        "MEIMethod().add_method('mymodule.paced_ascent', experiment.quick_method(20, seconds=1))\n"
        "MEISeed().insert1({'mei_seed': 1})\n"
    )
    subprocess.run([sys.executable, "-c", setup], env=env, check=True, capture_output=True, timeout=300)
    worker = Workers(tmp_path / "worker.log", env=env).wait_ready()
    cli = [sys.executable, "-m", "mei_service.cli"]
    try:
        subprocess.run([*cli, "enqueue", "mei_service.demo.pipeline.MEI"], env=env, check=True, timeout=120)
        wait_for(lambda: "received" in worker.output(), 60, message="task received")
        time.sleep(1.5)
        database.stop()
        wait_for(lambda: "retrying in" in worker.output(), 60, message="a retry")
        time.sleep(5)
        database.start()

        def finished():
            shown = subprocess.run(
                [*cli, "status", "mei_service.demo.pipeline.MEI"], env=env, capture_output=True, text=True
            )
            return f"done {neurons()}, queued 0, running 0, failed 0" in shown.stdout

        wait_for(finished, 120, interval=2, message="all keys done after the database returned")
    finally:
        worker.stop()
        database.stop()
        database.remove()
