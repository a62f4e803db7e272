"""The service against DataJoint's own populate, and how fast the scheduler enqueues.

    python -m bench.service_throughput [--enqueue-keys 100000] [--iterations 100] [--workers 2]

1. Enqueue: the seconds to find and queue 100,000 missing keys (to a queue no worker reads; withdrawn after).
2. 200 keys (50 units x 4 seeds) of the tiny Sensorium ensemble (5 members): wall time with
   ``MEI.populate(reserve_jobs=True)`` in 2 processes, against the service with 2 worker processes, with batches
   of 1 and of 16 keys, in the same run.
3. Per-key overhead: the same 200 keys with a one-step method, through the service and through populate.

Uses the local PostgreSQL and Redis (``DJ_*``, ``MEI_SERVICE_*``), schemas ``bench_*`` dropped at the end;
results in ``bench/results/service_throughput.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

RESULTS = Path(__file__).parent / "results"
PREFIX = "bench_service"
UNITS, SEEDS = 50, 4


def configure() -> None:
    from mei_service.local import apply_local_defaults

    apply_local_defaults()
    for name, value in {
        "MEI_SCHEMA": f"{PREFIX}_mei",
        "MEI_FABRIK_SCHEMA": f"{PREFIX}_fabrik",
        "MEI_BENCH_SCHEMA": f"{PREFIX}_lab",
        "MEI_STORE_LOCATION": f"/tmp/{PREFIX}_store",
        "MEI_SERVICE_DEFAULT_QUEUE": PREFIX,
        "MEI_ALLOWED_MODULES": "bench",
    }.items():
        os.environ.setdefault(name, value)


def method(iterations: int) -> dict:
    return {
        "initial": {"path": "mei.initial.RandomNormal"},
        "optimizer": {"path": "torch.optim.SGD", "kwargs": {"lr": 1.0}},
        "stopper": {"path": "mei.stoppers.NumIterations", "kwargs": {"num_iterations": iterations}},
        "precondition": {"path": "mei.legacy.ops.GaussianBlur", "kwargs": {"sigma": 1}},
        "postprocessing": {"path": "mei.legacy.ops.ChangeNorm", "kwargs": {"norm": 10}},
        "device": "cpu",
    }


def fill(enqueue_keys: int) -> tuple[dict, dict]:
    """The tiny ensemble with UNITS units, and a second dataset whose keys only the enqueue benchmark uses."""
    from bench.pipeline import MEI, TrainedEnsembleModel, TrainedModel, Unit
    from mei.fabrik import Dataset, Fabrikant, Model, Seed, Trainer
    from mei.main import MEIMethod, MEISeed

    Fabrikant().insert1({"fabrikant_name": "bench"}, skip_duplicates=True)
    Seed().insert([{"seed": seed} for seed in range(5)], skip_duplicates=True)
    owner = {"skip_duplicates": True}
    dataset = Dataset().add_entry("bench.pipeline.random_images", {"size": "tiny"}, dataset_fabrikant="bench", **owner)
    model = Model().add_entry("bench.pipeline.sensorium", {"size": "tiny"}, model_fabrikant="bench", **owner)
    trainer = Trainer().add_entry("bench.pipeline.keep_weights", {}, trainer_fabrikant="bench", **owner)
    TrainedModel().populate(dataset, model, trainer)
    members = dict(dataset, **model, **trainer)
    existing = (TrainedEnsembleModel & dataset).keys()
    ensemble = existing[0] if existing else TrainedEnsembleModel().create_ensemble(members)
    Unit().insert([dict(dataset, unit_id=unit) for unit in range(UNITS)], skip_duplicates=True)
    seeds = max(SEEDS, enqueue_keys // 1000)
    MEISeed().insert([{"mei_seed": seed} for seed in range(seeds)], skip_duplicates=True)
    MEIMethod().add_method("mei.methods.gradient_ascent", method(0), skip_duplicates=True)
    other = Dataset().add_entry("bench.pipeline.random_images", {"size": "enqueue"}, dataset_fabrikant="bench", **owner)
    unqueued = dict(other, ensemble_hash="0" * 32)
    TrainedEnsembleModel().insert1(unqueued, skip_duplicates=True)
    Unit().insert([dict(other, unit_id=unit) for unit in range(1000)], skip_duplicates=True)
    MEI().jobs  # noqa: B018 - declares the jobs table outside the timed part
    return ensemble, unqueued


def measure_enqueue(app, restriction: dict) -> dict:
    import redis

    from bench.pipeline import MEI
    from mei_service.jobs import missing_keys
    from mei_service.scheduler import enqueue

    start = time.perf_counter()
    found = len(missing_keys(MEI, restriction))
    finding = time.perf_counter() - start
    sent = enqueue(app, MEI, restriction, queue=f"{PREFIX}-idle")
    MEI().jobs.delete_quick()
    client = redis.Redis.from_url(app.mei_settings.broker_url)
    for name in client.scan_iter(f"{PREFIX}-idle*"):
        client.delete(name)
    return {
        "keys": len(sent.keys),
        "tasks": len(sent.batches),
        "seconds": sent.seconds,
        "keys_per_second": len(sent.keys) / sent.seconds,
        "seconds_finding_missing_keys": finding,
        "found": found,
    }


def clear(restriction: dict) -> None:
    from bench.pipeline import MEI

    (MEI & restriction).delete_quick()
    MEI().jobs.delete_quick()


def run_populate(restriction: dict, processes: int) -> float:
    code = f"from bench.pipeline import MEI; MEI().populate({restriction!r}, reserve_jobs=True)"
    env = dict(os.environ, OMP_NUM_THREADS=str(max(1, (os.cpu_count() or 1) // processes)))
    start = time.perf_counter()
    runs = [
        subprocess.Popen([sys.executable, "-c", code], env=env, stderr=subprocess.DEVNULL) for _ in range(processes)
    ]
    for run in runs:
        run.wait()
    return time.perf_counter() - start


def run_service(app, restriction: dict, batch_size: int) -> float:
    from bench.pipeline import MEI
    from mei_service import client

    start = time.perf_counter()
    client.enqueue(MEI & restriction, batch_size=batch_size, app=app).wait(timeout=3600, poll=1.0)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--enqueue-keys", type=int, default=100_000)
    parser.add_argument("--iterations", type=int, default=100, help="steps per MEI in the comparison")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--out", type=Path, default=RESULTS / "service_throughput.json")
    parser.add_argument("--parts", default="enqueue,comparison,overhead", help="which measurements to run")
    args = parser.parse_args()
    parts = set(args.parts.split(","))
    configure()

    from bench.pipeline import MEI
    from mei.main import MEIMethod
    from mei_service.app import app

    ensemble, unqueued = fill(args.enqueue_keys)
    report = json.loads(args.out.read_text()) if args.out.exists() else {}
    report.update(host=f"{os.cpu_count()} cores", workers=args.workers)
    if "enqueue" in parts:
        restriction = [dict(unqueued, mei_seed=s) for s in range(args.enqueue_keys // 1000)]
        report["enqueue"] = measure_enqueue(app, restriction)
        print(
            f"enqueue: {report['enqueue']['keys']} keys in {report['enqueue']['seconds']:.1f} s "
            f"({report['enqueue']['keys_per_second']:.0f} keys/s)"
        )

    command = [sys.executable, "-m", "workers", "--processes", str(args.workers), "--loglevel", "warning"]
    with Path(f"/tmp/{PREFIX}_workers.log").open("ab") as log:
        workers = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        while len(app.control.ping(timeout=1.0)) < args.workers:
            time.sleep(0.5)
        for name, iterations in (("comparison", args.iterations), ("overhead", 0)):
            if name not in parts:
                continue
            MEI().delete_quick()
            MEIMethod().delete_quick()
            key = MEIMethod().add_method("mei.methods.gradient_ascent", method(iterations))
            restriction = [dict(ensemble, **key, mei_seed=seed) for seed in range(SEEDS)]
            timings = {}
            for label, run in (
                ("populate_2_processes", lambda r=restriction: run_populate(r, args.workers)),
                ("service_batch_1", lambda r=restriction: run_service(app, r, 1)),
                ("service_batch_16", lambda r=restriction: run_service(app, r, 16)),
            ):
                clear(restriction)
                timings[label] = run()
                print(f"{name}: {label} {timings[label]:.1f} s for {UNITS * SEEDS} keys")
            keys = UNITS * SEEDS
            report[name] = {
                "keys": keys,
                "iterations": iterations + 1,
                "seconds": timings,
                "ms_per_key_per_process": {k: 1000 * v * args.workers / keys for k, v in timings.items()},
                "service_batch_1_over_populate": timings["service_batch_1"] / timings["populate_2_processes"],
                "service_batch_16_over_populate": timings["service_batch_16"] / timings["populate_2_processes"],
            }
    finally:
        workers.terminate()
        workers.wait(60)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"written to {args.out}")

    import datajoint as dj

    for schema in (f"{PREFIX}_lab", f"{PREFIX}_mei", f"{PREFIX}_fabrik"):
        dj.conn().query(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


if __name__ == "__main__":
    main()
