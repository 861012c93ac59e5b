"""``phasescreen serve | worker | db upgrade | apikey create``: running the service."""

from __future__ import annotations

import argparse
import functools
import logging
import sys

from store.settings import ServiceSettings


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    serve = subparsers.add_parser(
        "serve",
        help="run the HTTP API (embedded SQLite and in-process jobs unless a database and Redis are set)",
    )
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    serve.add_argument("--port", type=int, default=8000, help="port to listen on (default 8000)")
    serve.set_defaults(func=_serve)

    worker = subparsers.add_parser("worker", help="run an RQ worker (one per GPU; needs PHASESCREEN_REDIS_URL)")
    worker.add_argument("--burst", action="store_true", help="exit once the queue is empty")
    worker.add_argument(
        "--queue",
        action="append",
        default=[],
        metavar="NAME",
        help="queue to work (repeatable; default PHASESCREEN_QUEUE_NAME)",
    )
    worker.set_defaults(func=_worker)

    db = subparsers.add_parser("db", help="database schema")
    db_sub = db.add_subparsers(dest="db_command", metavar="COMMAND")
    upgrade = db_sub.add_parser("upgrade", help="apply the Alembic migrations (PHASESCREEN_DATABASE_URL)")
    upgrade.add_argument("--revision", default="head", help="target revision (default head)")
    upgrade.set_defaults(func=_db_upgrade)
    prune = db_sub.add_parser(
        "prune",
        help="drop the stored arrays of model profiles no screening used for DAYS (results are kept)",
    )
    prune.add_argument("--older-than", type=float, required=True, metavar="DAYS", help="retention window in days")
    prune.add_argument("--dry-run", action="store_true", help="only say what would be dropped")
    prune.set_defaults(func=_db_prune)
    db.set_defaults(func=functools.partial(_usage, db))

    apikey = subparsers.add_parser("apikey", help="API keys")
    apikey_sub = apikey.add_subparsers(dest="apikey_command", metavar="COMMAND")
    create = apikey_sub.add_parser("create", help="create a key and print its secret (shown once)")
    create.add_argument("--name", default="default", help="a label for the key")
    create.add_argument("--rate-limit", type=int, default=None, help="requests per minute for this key")
    create.set_defaults(func=_apikey_create)
    apikey.set_defaults(func=functools.partial(_usage, apikey))


def _configure_logging(settings: ServiceSettings) -> None:
    logging.basicConfig(
        level=settings.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )


def _serve(args: argparse.Namespace) -> int:
    import uvicorn

    from service.app import create_app

    settings = ServiceSettings()
    _configure_logging(settings)
    app = create_app(settings)
    try:
        uvicorn.run(app, host=args.host, port=args.port, log_level=settings.log_level.lower())
    finally:  # in-process jobs hand their rows back instead of holding the exit for an hour
        app.state.runtime.close()
    return 0


def _usage(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    """A command group run without its subcommand: its help, exit 2."""
    parser.print_help()
    return 2


def _worker(args: argparse.Namespace) -> int:
    from worker.main import run_worker

    settings = ServiceSettings()
    _configure_logging(settings)
    run_worker(settings, burst=args.burst, queues=args.queue)
    return 0


def _db_upgrade(args: argparse.Namespace) -> int:
    from store.db import upgrade

    settings = ServiceSettings()
    upgrade(settings.sqlalchemy_url, args.revision)
    print(f"database at {_redacted(settings.sqlalchemy_url)} is at revision {args.revision}")
    return 0


def _db_prune(args: argparse.Namespace) -> int:
    from store.db import local_session
    from store.retention import prune_profiles

    if args.older_than < 0:
        print("phasescreen db prune: --older-than must be at least 0 days", file=sys.stderr)
        return 2
    with local_session() as session:
        report = prune_profiles(session, older_than_days=args.older_than, dry_run=args.dry_run)
        session.commit()
    verb = "would drop" if args.dry_run else "dropped"
    print(f"{verb} the arrays of {report.profiles} model profile(s), {report.bytes / 2**20:,.1f} MiB")
    return 0


def _apikey_create(args: argparse.Namespace) -> int:
    from store.apikeys import create_api_key
    from store.db import local_session

    with local_session() as session:
        key, secret = create_api_key(session, args.name, rate_limit_per_minute=args.rate_limit)
        session.commit()
        print(secret)
        print(f"key {key.id} ({args.name}) created; the secret above is shown only once", file=sys.stderr)
    return 0


def _redacted(url: str) -> str:
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True)
