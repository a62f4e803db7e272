"""Starting the workers of one host: one Celery worker process per GPU, each pinned to its GPU.

    python -m workers [--gpus 0,1 | --processes N] [--queues mei,h100] [--loglevel info]

Each process is ``celery -A mei_service.app worker`` with one pool child (spawned, so CUDA starts fresh in it)
and ``CUDA_VISIBLE_DEVICES`` set to its GPU; the child keeps its model cache across tasks. Without GPUs it
runs ``--processes`` CPU workers. Names are unique, so several hosts (or several runs on one host) need no
naming. SIGTERM or SIGINT is passed on: each worker finishes or, after the soft-shutdown timeout, returns its
unfinished keys to the queue. A worker that exits unexpectedly is restarted.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from mei_service.settings import Settings

logger = logging.getLogger("workers")
RESTART_DELAY = 5.0
# glibc returns large freed blocks to the system and fetches them again at the next step; a CPU worker generating
# batches of MEIs keeps them instead (bench/batch_throughput.py measures the difference).
CPU_ALLOCATOR_SETTINGS = {"MALLOC_MMAP_MAX_": "0", "MALLOC_TRIM_THRESHOLD_": str(1 << 34)}


@dataclass
class Slot:
    label: str
    visible_devices: str
    process: subprocess.Popen | None = None


def visible_gpus() -> list[str]:
    try:
        import torch

        return [str(index) for index in range(torch.cuda.device_count())]
    except ImportError:
        return []


def default_queues(settings: Settings, gpus: list[str]) -> str:
    """The default queue, and on a host with GPUs also the queue of the methods that generate on CUDA."""
    return f"{settings.default_queue},{settings.gpu_queue}" if gpus else settings.default_queue


def worker_command(slot: Slot, queues: str, loglevel: str) -> list[str]:
    name = f"mei-{slot.label}-{uuid.uuid4().hex[:6]}@%h"
    return [
        sys.executable, "-m", "celery", "-A", "mei_service.app", "worker",
        "--pool", "prefork", "--concurrency", "1", "--hostname", name,
        "--queues", queues, "--loglevel", loglevel, "--task-events", "--without-gossip",
    ]  # fmt: skip


def start(slot: Slot, queues: str, loglevel: str, threads: int) -> None:
    # Without a limit every process would use every core: on a shared CPU they would slow each other down.
    env = {"OMP_NUM_THREADS": str(threads), **os.environ, "CUDA_VISIBLE_DEVICES": slot.visible_devices}
    if not slot.visible_devices:
        env = {**CPU_ALLOCATOR_SETTINGS, **env}
    # SIGTERM starts Celery's soft shutdown: the running task has worker_soft_shutdown_timeout seconds to finish,
    # then its message goes back to the queue (a plain warm shutdown would wait for the whole batch).
    env["REMAP_SIGTERM"] = "SIGQUIT"
    slot.process = subprocess.Popen(worker_command(slot, queues, loglevel), env=env)
    logger.info(
        "started worker %s (pid %s, CUDA_VISIBLE_DEVICES=%r)", slot.label, slot.process.pid, slot.visible_devices
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="mei-service worker", description=__doc__.split("\n\n")[0])
    parser.add_argument("--gpus", help="comma-separated GPU indices (default: every visible GPU)")
    parser.add_argument("--processes", type=int, default=1, help="CPU workers when there is no GPU (default 1)")
    parser.add_argument(
        "--queues",
        default=None,
        help="queues to consume (default MEI_SERVICE_DEFAULT_QUEUE, and with GPUs its -cuda queue for CUDA methods)",
    )
    parser.add_argument("--loglevel", default="info", help="Celery's log level of the workers (default info)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")

    from mei.batching import configured_batch_size
    from mei.errors import ConfigurationError
    from mei_service.settings import Settings

    settings = Settings.from_env()
    try:
        configured_batch_size()
    except ConfigurationError as error:  # stop here rather than fail every task
        raise SystemExit(f"mei-service worker: {error}") from error
    gpus = args.gpus.split(",") if args.gpus else visible_gpus()
    queues = args.queues or default_queues(settings, gpus)
    slots = [Slot(f"gpu{gpu}", gpu) for gpu in gpus] or [Slot(f"cpu{i}", "") for i in range(args.processes)]

    stopping = False

    def forward(signum: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True
        for slot in slots:
            if slot.process and slot.process.poll() is None:
                slot.process.send_signal(signum)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    threads = max(1, (os.cpu_count() or 1) // len(slots))
    for slot in slots:
        start(slot, queues, args.loglevel, threads)
    while True:
        running = [slot for slot in slots if slot.process and slot.process.poll() is None]
        if stopping and not running:
            return 0
        for slot in slots:
            if not stopping and slot.process and slot.process.poll() is not None:
                logger.warning("worker %s exited with %s; restarting", slot.label, slot.process.returncode)
                time.sleep(RESTART_DELAY)
                start(slot, queues, args.loglevel, threads)
        time.sleep(0.5)
