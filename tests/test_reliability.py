"""The jobs table is the truth: with real processes, the service converges whatever happens to the broker.

Each scenario runs the demo pipeline on a PostgreSQL and a Redis of the test's own (so that both can be
stopped, emptied and killed), two worker processes and ``mei-service scheduler``, and injects one fault
(or all three) while keys are being generated. Every key must then be written exactly once, none failed,
none left queued or running, and the service must have recovered within the bound that its settings give.
"""

import contextlib
import os
import signal
import subprocess
import sys
import time
from dataclasses import fields
from pathlib import Path

import psycopg2
import pytest
import redis
from service import DisposablePostgres, Process, Workers, wait_for

from mei_service.broker import waiting_task_ids
from mei_service.settings import PREFIX, Settings

pytestmark = pytest.mark.slow
TABLE = "mei_service.demo.pipeline.MEI"
KEYS_PER_SCENARIO = 60  # 4 neurons x 15 seeds
SCALED = {
    "MEI_SERVICE_HEARTBEAT_INTERVAL": "1",
    "MEI_SERVICE_HEARTBEAT_TTL": "6",
    "MEI_SERVICE_CLAIM_TIMEOUT": "6",
}
SCALED_INTERVAL = 2
# What the scaled settings promise: a lease or a claim lapses (6 s), the next round (2 s) gives the key back.
SCALED_BOUND = 6 + SCALED_INTERVAL + 4


class Redis(Process):
    """A Redis of the test's own, keeping nothing on disk, as the machine's Redis does."""

    def __init__(self, log: Path, port: int) -> None:
        command = ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
        super().__init__(command, log)
        self.client = redis.Redis(port=port)
        wait_for(self.answers, 20, message="redis up")

    def answers(self) -> bool:
        try:
            return self.client.ping()
        except redis.RedisError:
            return False

    def restart_empty(self) -> None:
        """A crash without persistence: SHUTDOWN NOSAVE, then a fresh server on the same port."""
        with contextlib.suppress(redis.ConnectionError):
            self.client.shutdown(nosave=True)
        self.process.wait(20)
        self.__init__(self.log, self.client.connection_pool.connection_kwargs["port"])


class Lab:
    """The demo pipeline, trained once, on a disposable PostgreSQL; each scenario adds its own seeds."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.postgres_port = 26000 + os.getpid() % 4000
        self.database = DisposablePostgres(self.postgres_port)
        self.database.start()
        self.prefix = f"{os.environ['MEI_SERVICE_DEFAULT_QUEUE']}_faults"
        self.env = dict(
            os.environ,
            DJ_PORT=str(self.postgres_port),
            MEI_SCHEMA=f"{self.prefix}_mei",
            MEI_FABRIK_SCHEMA=f"{self.prefix}_fabrik",
            MEI_DEMO_SCHEMA=f"{self.prefix}_demo",
            MEI_STORE_LOCATION=str(root / "store"),
            MEI_SERVICE_DEFAULT_QUEUE=self.prefix,
        )
        self.python(
            "import experiment\n"
            "from mei.main import MEIMethod\n"
            "experiment.fill()\n"
            "MEIMethod().add_method('mymodule.paced_ascent', experiment.quick_method(10, seconds=0.4))\n"
        )
        self.scenarios = 0

    def python(self, code: str) -> None:
        subprocess.run([sys.executable, "-c", code], env=self.env, check=True, capture_output=True, timeout=300)

    def query(self, sql: str, args: tuple = ()) -> list[tuple]:
        connection = psycopg2.connect(host="127.0.0.1", port=self.postgres_port, user="postgres", dbname="postgres")
        try:
            with connection.cursor() as cursor:
                cursor.execute(sql, args)
                return cursor.fetchall()
        finally:
            connection.close()

    def new_seeds(self) -> range:
        """Seeds of a new scenario: 60 keys that nothing has generated yet."""
        self.scenarios += 1
        seeds = range(100 * self.scenarios, 100 * self.scenarios + KEYS_PER_SCENARIO // 4)
        self.python(f"from mei.main import MEISeed\nMEISeed().insert([{{'mei_seed': s}} for s in {list(seeds)}])")
        return seeds

    def tables(self) -> tuple[str, str]:
        schema = f"{self.prefix}_demo"
        [(mei,)] = self.query(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = %s AND table_name LIKE %s "
            "AND table_name NOT LIKE %s",
            (schema, "%m_e_i", "~%"),
        )
        return f'"{schema}"."{mei}"', f'"{schema}"."~~{mei.lstrip("_")}"'

    def done(self, seeds: range) -> int:
        mei, _ = self.tables()
        return self.query(f"SELECT count(*) FROM {mei} WHERE mei_seed = ANY(%s)", (list(seeds),))[0][0]

    def jobs(self, seeds: range) -> list[tuple]:
        """``(status, version, pid, scheduled_time > fault)`` of the job rows of these seeds."""
        _, jobs = self.tables()
        return self.query(
            f"SELECT status, version, pid, error_message FROM {jobs} WHERE mei_seed = ANY(%s)", (list(seeds),)
        )

    def remove(self) -> None:
        self.database.stop()
        self.database.remove()


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    created = Lab(tmp_path_factory.mktemp("lab"))
    yield created
    created.remove()


class Stack:
    """Redis, two workers and the scheduler daemon for one scenario."""

    def __init__(self, lab: Lab, root: Path, settings: dict[str, str], interval: float) -> None:
        self.lab, self.root, self.interval = lab, root, interval
        port = 27000 + os.getpid() % 4000
        self.redis = Redis(root / "redis.log", port)
        self.env = dict(
            lab.env,
            MEI_SERVICE_BROKER_URL=f"redis://127.0.0.1:{port}/0",
            MEI_SERVICE_RESULT_BACKEND=f"redis://127.0.0.1:{port}/1",
            **settings,
        )
        self.workers = [self.worker(f"worker{index}") for index in range(2)]
        command = [sys.executable, "-m", "mei_service.cli", "scheduler", TABLE, "--interval", str(interval)]
        self.scheduler = Process(command, root / "scheduler.log", self.env)

    def worker(self, name: str) -> Workers:
        return Workers(self.root / f"{name}.log", env=self.env)

    def stop(self) -> None:
        for process in (self.scheduler, *self.workers, self.redis):
            process.stop(timeout=10)


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def stalled(lab: Lab, seeds: range, client: redis.Redis, fault: float) -> list[tuple]:
    """Keys that no live worker holds and whose message waits nowhere: reserved by a process that is gone, or
    queued under a task whose message is not in a queue of the broker and was not sent since the fault."""
    try:
        waiting = {"task:" + task_id for task_id in waiting_task_ids(client)}
    except redis.RedisError:
        waiting = set()
    _, jobs = lab.tables()
    rows = lab.query(
        f"SELECT status, version, pid, extract(epoch from scheduled_time) FROM {jobs} WHERE mei_seed = ANY(%s) "
        "AND status IN ('pending', 'reserved')",
        (list(seeds),),
    )
    gone = [row for row in rows if row[0] == "reserved" and not alive(row[2])]
    unsent = [row for row in rows if row[0] == "pending" and row[1] not in waiting and row[3] < fault]
    return gone + [row for row in unsent if row[1].startswith("task:")]


def run_scenario(lab, tmp_path, faults, settings=SCALED, interval=SCALED_INTERVAL) -> float:
    """Runs the faults once a third of the keys are done; returns the seconds from the first fault until no
    key was stalled any more, after checking that every key was written once and none is left."""
    seeds = lab.new_seeds()
    stack = Stack(lab, tmp_path, settings, interval)
    try:
        wait_for(lambda: lab.done(seeds) >= KEYS_PER_SCENARIO // 3, 180, message="a third of the keys done")
        # The database clock and this host's are the same machine's.
        fault = lab.query("SELECT extract(epoch from CURRENT_TIMESTAMP(3))")[0][0]
        started = time.monotonic()
        for inject in faults:
            inject(lab, stack)
        recovered = None
        deadline = time.monotonic() + 240
        while lab.done(seeds) < KEYS_PER_SCENARIO and time.monotonic() < deadline:
            if recovered is None and not stalled(lab, seeds, stack.redis.client, fault):
                recovered = time.monotonic() - started
            time.sleep(0.5)
        assert lab.done(seeds) == KEYS_PER_SCENARIO, [f"{p.log}:\n{p.output()[-3000:]}" for p in stack.workers]
        left = lab.jobs(seeds)
        assert left == [], left  # none failed, none left queued or running
        return recovered if recovered is not None else time.monotonic() - started
    finally:
        stack.stop()


def kill_a_worker(lab: Lab, stack: Stack) -> None:
    """SIGKILL to one worker's whole process group (a node gone), and a new worker 3 s later."""
    doomed = stack.workers.pop(0)
    doomed.signal(signal.SIGKILL)
    doomed.process.wait(10)
    time.sleep(3)
    stack.workers.append(stack.worker("replacement"))


def empty_the_broker(lab: Lab, stack: Stack) -> None:
    stack.redis.restart_empty()


def stop_the_database(lab: Lab, stack: Stack) -> None:
    lab.database.stop()
    time.sleep(5)
    lab.database.start()


@pytest.mark.parametrize(
    "faults",
    [[kill_a_worker], [empty_the_broker], [stop_the_database], [kill_a_worker, empty_the_broker, stop_the_database]],
    ids=["worker-killed", "broker-emptied", "database-stopped", "all-three"],
)
def test_every_key_is_written_once_after(faults, lab, tmp_path):
    recovery = run_scenario(lab, tmp_path, faults)
    print(f"{'+'.join(fault.__name__ for fault in faults)}: recovered in {recovery:.1f} s")
    # The database fault alone stalls nothing: the workers retry. Together, the faults' bounds add up.
    assert recovery <= SCALED_BOUND * len(faults)


def default_settings() -> dict[str, str]:
    """The service's own defaults for every ``MEI_SERVICE_*`` variable this test run set to speed tests up
    (conftest), the run's queue aside."""
    defaults = {PREFIX + setting.name.upper(): setting.default for setting in fields(Settings)}
    return {name: str(defaults[name]) for name in os.environ if name in defaults and name != PREFIX + "DEFAULT_QUEUE"}


def test_the_default_settings_recover_within_60_seconds(lab, tmp_path):
    settings = default_settings()
    assert settings[PREFIX + "HEARTBEAT_TTL"] == "30.0", "the lease of the defaults, not conftest's 4 s"
    recovery = run_scenario(lab, tmp_path, [kill_a_worker, empty_the_broker], settings=settings, interval=10)
    print(f"defaults: recovered in {recovery:.1f} s")
    assert recovery <= 60


def test_keys_recorded_but_never_sent_are_sent_again(lab, tmp_path):
    """The enqueuing process is SIGKILLed between recording the keys as queued and sending their tasks."""
    seeds = lab.new_seeds()
    stack = Stack(lab, tmp_path, SCALED, SCALED_INTERVAL)
    stack.scheduler.stop()
    try:
        code = (
            "import os, signal\n"
            "from mei_service import scheduler\n"
            "from mei_service.app import app\n"
            "from mei_service.demo.pipeline import MEI\n"
            "app.send_task = lambda *args, **kwargs: os.kill(os.getpid(), signal.SIGKILL)\n"
            "scheduler.enqueue(app, MEI)\n"
        )
        killed = subprocess.run([sys.executable, "-c", code], env=stack.env, capture_output=True, timeout=120)
        assert killed.returncode == -signal.SIGKILL
        queued = [row for row in lab.jobs(seeds) if row[0] == "pending" and row[1].startswith("task:")]
        assert len(queued) == KEYS_PER_SCENARIO  # recorded, and no message on the broker
        stack.scheduler = Process(
            [sys.executable, "-m", "mei_service.cli", "scheduler", TABLE, "--interval", str(SCALED_INTERVAL)],
            tmp_path / "scheduler2.log",
            stack.env,
        )
        wait_for(lambda: lab.done(seeds) == KEYS_PER_SCENARIO, 240, message="every key done")
        assert lab.jobs(seeds) == []
    finally:
        stack.stop()


def test_a_late_copy_of_a_message_writes_nothing(lab, tmp_path):
    """A message sent again after its keys were given back and done elsewhere claims nothing."""
    seeds = lab.new_seeds()
    stack = Stack(lab, tmp_path, SCALED, SCALED_INTERVAL)
    try:
        wait_for(lambda: lab.done(seeds) == KEYS_PER_SCENARIO, 240, message="every key done")
        code = (
            "from mei_service.app import app\n"
            "from mei_service.demo.pipeline import MEI\n"
            f"keys = MEI().key_source & [{{'mei_seed': s}} for s in {list(seeds)}]\n"
            "from mei_service.tables import json_keys\n"
            "result = app.send_task('mei_service.generate', args=['mei_service.demo.pipeline.MEI', "
            "json_keys(keys.keys())], queue=app.conf.task_default_queue)\n"
            "print(result.get(timeout=120))\n"
        )
        late = subprocess.run([sys.executable, "-c", code], env=stack.env, capture_output=True, text=True, timeout=180)
        assert f"'skipped': {KEYS_PER_SCENARIO}" in late.stdout, late.stdout + late.stderr
        assert lab.done(seeds) == KEYS_PER_SCENARIO and lab.jobs(seeds) == []
    finally:
        stack.stop()


def test_leases_are_renewed_by_the_holder(lab, tmp_path):
    """A worker that holds keys longer than the lease keeps them: its heartbeat renews the lease."""
    seeds = lab.new_seeds()
    settings = dict(SCALED, MEI_SERVICE_HEARTBEAT_TTL="3")
    stack = Stack(lab, tmp_path, settings, SCALED_INTERVAL)
    try:
        wait_for(lambda: lab.done(seeds) == KEYS_PER_SCENARIO, 240, message="every key done")
        scheduler_log = stack.scheduler.output()
        assert "stopped renewing their lease" not in scheduler_log, scheduler_log
    finally:
        stack.stop()
