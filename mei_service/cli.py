"""mei-service: the command line of the service.

    mei-service enqueue TABLE [--restriction R] [--priority P] [--batch-size B] [--queue Q] [--wait]
    mei-service init [TABLE ...]
    mei-service scheduler [TABLE ...] [--interval S]
    mei-service worker [--gpus 0,1 | --processes N] [--queues Q]
    mei-service status TABLE [--restriction R] [--json]
    mei-service errors TABLE [--restriction R] [--limit N]
    mei-service gallery TABLE [--restriction R] --out DIR [--limit N] [--page P]
    mei-service cancel TABLE (--restriction R | --where SQL | --all)
    mei-service retry TABLE (--restriction R | --where SQL | --all) [--wait]
    mei-service flower [--port P] [--local]
    mei-service health [--database] [--worker] [--url URL]
    mei-service demo

TABLE is the dotted import path of an MEI table, such as mei_service.demo.pipeline.MEI; init and scheduler
default to MEI_SERVICE_TABLES. R is a key as JSON, such as '{"mei_seed": 42}', a list value meaning any of
them, '{"neuron_id": [1, 2]}', or a list of keys; its names must be attributes of the table's keys. A SQL
condition goes in --where, such as "neuron_id < 10"; given both, keys must meet both. Errors are one line;
--debug shows their traceback.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from typing import Any

from mei_service.local import endpoints


def _table(path: str) -> Any:
    from mei_service.tables import resolve_table

    return resolve_table(path)


def _table_and_restriction(args: argparse.Namespace) -> tuple[Any, str | None]:
    from mei_service.restrictions import from_command_line

    table = _table(args.table)
    return table, from_command_line(table, args.restriction, args.where)


def cmd_enqueue(args: argparse.Namespace) -> int:
    from mei_service.app import app
    from mei_service.scheduler import enqueue

    table, restriction = _table_and_restriction(args)
    sent = enqueue(app, table, restriction, priority=args.priority, batch_size=args.batch_size, queue=args.queue)
    print(sent)
    return _waited(table, restriction) if args.wait else 0


def _waited(table: Any, restriction: Any) -> int:
    """Follows every queued or running key of ``table & restriction`` (queued now or before) until none is
    left; exit status 1 when any of its keys failed, else 0."""
    from mei_service.client import follow

    final = follow(table & restriction if restriction is not None else table)
    print(final)
    return 1 if final.failed else 0


def _tables(paths: list[str]) -> tuple[list[str], list[Any]]:
    from mei_service.settings import Settings

    paths = paths or list(Settings.from_env().tables)
    if not paths:
        raise SystemExit("name the MEI tables, as arguments or in MEI_SERVICE_TABLES (comma-separated dotted paths)")
    return paths, [_table(path) for path in paths]


def cmd_init(args: argparse.Namespace) -> int:
    from mei_service.jobs import declared_jobs

    paths, tables = _tables(args.tables)
    for path, table in zip(paths, tables, strict=True):
        # Instantiating a table declares it and every table it depends on, each in its schema; its jobs table
        # too, so that lab members, who may not create tables, can enqueue at once.
        print(f"declared {path} as {table().full_table_name} with {declared_jobs(table).full_table_name}")
    return 0


def cmd_scheduler(args: argparse.Namespace) -> int:
    from mei_service.app import app
    from mei_service.scheduler import run_daemon

    paths, tables = _tables(args.tables)
    if args.batch_size is not None:
        app.mei_settings.check_batch_size(args.batch_size)  # refused now, not logged every round
    print(f"scheduling {', '.join(paths)} every {args.interval} s")
    run_daemon(app, tables, interval=args.interval, batch_size=args.batch_size)
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    from mei_service.client import status

    table, restriction = _table_and_restriction(args)
    found = status(table & restriction if restriction is not None else table, latest_errors=args.errors)
    print(json.dumps(found.as_dict(), indent=2, default=str) if args.json else found)
    return 0


def cmd_errors(args: argparse.Namespace) -> int:
    from mei_service.client import errors

    table, restriction = _table_and_restriction(args)
    failed = errors(table, restriction, limit=args.limit)
    for key, message, stack in failed:
        print(f"{json.dumps(key, default=str)}: {message}\n{stack.rstrip()}\n")
    print(f"{len(failed)} failed keys shown (latest first); mei-service retry queues them again")
    return 0


def cmd_gallery(args: argparse.Namespace) -> int:
    from mei_service.galleries import gallery

    table, restriction = _table_and_restriction(args)
    found = gallery(table, restriction, limit=args.limit, page=args.page)
    for path in found.save(args.out):
        print(f"wrote {path}")
    shown = f"{len(found.units)} of {found.unit_count} units"
    print(f"page {found.page} of {found.pages}: {shown}, {found.failed_count} failed keys")
    return 0


def cmd_cancel(args: argparse.Namespace) -> int:
    from mei_service.app import app
    from mei_service.client import cancel

    table, restriction = _table_and_restriction(args)
    task_ids = cancel(table, restriction, all=args.all, app=app)
    print(f"cancelled {len(task_ids)} tasks")
    return 0


def cmd_retry(args: argparse.Namespace) -> int:
    from mei_service.app import app
    from mei_service.client import retry

    table, restriction = _table_and_restriction(args)
    sent = retry(table, restriction, all=args.all, app=app)
    print(f"queued {len(sent.keys)} keys again in {len(sent.batches)} tasks")
    return _waited(table, restriction) if args.wait else 0


def cmd_worker(args: argparse.Namespace, extra: list[str]) -> int:
    # The data plane is started as its own program: the control plane never imports it.
    os.execv(sys.executable, [sys.executable, "-m", "workers", *extra])
    return 1


def cmd_flower(args: argparse.Namespace) -> int:
    from mei_service.settings import Settings

    settings = Settings.from_env()
    if not settings.flower_basic_auth:
        print(
            "refusing to start Flower without authentication: set MEI_SERVICE_FLOWER_BASIC_AUTH=user:password "
            "(Flower's API can shut workers down and revoke tasks)",
            file=sys.stderr,
        )
        return 2
    command = [
        sys.executable,
        "-m",
        "celery",
        "-A",
        "mei_service.app",
        "flower",
        f"--port={args.port or settings.flower_port}",
    ]
    if args.local:
        command.append("--address=127.0.0.1")
    # With credentials set, Flower also refuses cross-site requests; an open API would answer any web page.
    os.environ.pop("FLOWER_UNAUTHENTICATED_API", None)
    # Flower reads the credentials from its environment, so they never appear in the process list.
    os.environ["FLOWER_BASIC_AUTH"] = settings.flower_basic_auth
    os.execv(sys.executable, command)
    return 1


def cmd_health(args: argparse.Namespace) -> int:
    from mei_service import health
    from mei_service.settings import Settings

    settings = Settings.from_env()
    problems = [health.broker_problem(settings)]
    if args.database:
        problems.append(health.database_problem())
    if args.worker:
        problems.append(health.worker_problem(settings))
    problems += [health.url_problem(url) for url in args.url]
    problems = [problem for problem in problems if problem]
    for problem in problems:
        print(problem, file=sys.stderr)
    if problems:
        return 1
    checked = ["broker", "database" if args.database else "", "worker" if args.worker else "", *args.url]
    print(f"ok: {', '.join(name for name in checked if name)}")
    return 0


def cmd_demo(args: argparse.Namespace, extra: list[str]) -> int:
    from mei_service.demo.__main__ import main as demo

    demo(extra)
    return 0


def parser() -> argparse.ArgumentParser:
    root = argparse.ArgumentParser(
        prog="mei-service", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    commands = root.add_subparsers(dest="command", required=True)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--debug", action="store_true", help="show the traceback of an error")

    def command(name: str, help: str) -> argparse.ArgumentParser:
        return commands.add_parser(name, help=help, description=help, parents=[common])

    def restricted(name: str, help: str, whole_table_flag: bool = False) -> argparse.ArgumentParser:
        selecting = command(name, help)
        selecting.add_argument("table", metavar="TABLE", help="dotted path of an MEI table")
        selecting.add_argument(
            "--restriction",
            metavar="JSON",
            help='keys as JSON: {"mei_seed": 42}, {"neuron_id": [1, 2]} or a list of such objects',
        )
        selecting.add_argument("--where", metavar="SQL", help='a SQL condition, such as "neuron_id < 100"')
        if whole_table_flag:
            selecting.add_argument("--all", action="store_true", help="act on the whole table (no restriction)")
        return selecting

    enqueue = restricted("enqueue", "queue the missing MEIs of a table once")
    enqueue.add_argument("--priority", type=int, help="0 (most urgent) to 9; default MEI_SERVICE_DEFAULT_PRIORITY")
    enqueue.add_argument("--batch-size", type=int, help="keys per task; default MEI_SERVICE_BATCH_SIZE")
    enqueue.add_argument("--queue", help="queue of the workers to use, e.g. a GPU kind")
    wait_help = "follow the keys, queued now or before, until none is queued or running; exit 1 if any failed"
    enqueue.add_argument("--wait", action="store_true", help=wait_help)
    enqueue.set_defaults(run=cmd_enqueue)

    init = command("init", "declare the MEI tables, their schemas and jobs tables (default MEI_SERVICE_TABLES)")
    init.add_argument("tables", nargs="*", metavar="TABLE", help="dotted path of an MEI table")
    init.set_defaults(run=cmd_init)

    scheduler_help = "keep tables topped up and give back the keys of dead workers"
    daemon = command("scheduler", scheduler_help)
    daemon.add_argument("tables", nargs="*", metavar="TABLE", help="dotted path of an MEI table")
    daemon.add_argument("--interval", type=float, default=10.0, help="seconds between rounds (default 10)")
    daemon.add_argument("--batch-size", type=int, help="keys per task; default MEI_SERVICE_BATCH_SIZE")
    daemon.set_defaults(run=cmd_scheduler)

    status = restricted(
        "status", "counts of done, queued, running and failed keys, throughput, time to go, errors grouped"
    )
    status.add_argument(
        "--errors", type=int, default=5, help="how many of the latest failed keys to read (0: no errors at all)"
    )
    status.add_argument("--json", action="store_true", help="print the status as JSON, for scripts")
    status.set_defaults(run=cmd_status)
    errors = restricted("errors", "each failed key with its message and traceback, latest first")
    errors.add_argument("--limit", type=int, default=20, help="how many failed keys to show (default 20)")
    errors.set_defaults(run=cmd_errors)

    shown = restricted("gallery", "write a gallery of the MEIs: one HTML page (opens from disk) and a PNG grid")
    shown.add_argument("--out", required=True, help="folder for index.html and gallery.png")
    shown.add_argument("--limit", type=int, default=50, help="units per page, best first (default 50)")
    shown.add_argument("--page", type=int, default=1, help="which page (default 1)")
    shown.set_defaults(run=cmd_gallery)

    restricted("cancel", "withdraw queued keys and stop running ones", True).set_defaults(run=cmd_cancel)
    retry = restricted("retry", "queue failed keys again", True)
    retry.add_argument("--wait", action="store_true", help=wait_help)
    retry.set_defaults(run=cmd_retry)

    worker = commands.add_parser("worker", help="start this host's workers (see --help)", add_help=False)
    worker.set_defaults(run=cmd_worker, passthrough=True)
    flower = command("flower", "start Flower, the monitor, with basic authentication")
    flower.add_argument("--port", type=int, help="default MEI_SERVICE_FLOWER_PORT")
    flower.add_argument("--local", action="store_true", help="serve on 127.0.0.1 only")
    flower.set_defaults(run=cmd_flower)
    health = command("health", "print ok and exit 0 when the broker (and what is named) answers, else say what not")
    health.add_argument("--database", action="store_true", help="also the database")
    health.add_argument("--worker", action="store_true", help="also a worker process of this host (its heartbeat)")
    health.add_argument("--url", action="append", default=[], help="also this URL (answers 200)")
    health.set_defaults(run=cmd_health)
    demo = commands.add_parser("demo", help="run the demo end to end (see --help)", add_help=False)
    demo.set_defaults(run=cmd_demo, passthrough=True)
    return root


# The commands that use the database, the broker and the store say at start which ones.
# A daemon's failure goes to its log with the traceback, for whoever runs it to read later.
DAEMONS = ("scheduler",)
ANNOUNCED = ("enqueue", "init", "scheduler", "status", "errors", "gallery", "cancel", "retry")


def main(argv: list[str] | None = None) -> int:
    from mei.errors import ConfigurationError
    from mei_service.restrictions import RestrictionError
    from mei_service.settings import SettingsError

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    args, extra = parser().parse_known_args(argv)
    if getattr(args, "passthrough", False):
        return args.run(args, extra)
    if extra:
        parser().error(f"unrecognized arguments: {' '.join(extra)}")
    try:
        if args.command in ANNOUNCED:
            logging.getLogger("mei_service").info("using %s", endpoints())
        return args.run(args)
    except (ConfigurationError, RestrictionError, SettingsError) as error:
        # What the user asked for cannot be done as asked: say what, not where in the code.
        if args.debug:
            raise
        print(f"mei-service {args.command}: {error}", file=sys.stderr)
        return 2
    except Exception as error:
        if args.debug or args.command in DAEMONS:
            raise
        print(f"mei-service {args.command}: {type(error).__name__}: {error} (--debug shows where)", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
