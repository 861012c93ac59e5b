"""``phasescreen serve | worker | db upgrade | apikey create | list | revoke``: running the service."""

from __future__ import annotations

import argparse
import functools
import sys
from typing import Any

from store.settings import ServiceSettings


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    serve = subparsers.add_parser(
        "serve",
        help="run the HTTP API (embedded SQLite and in-process jobs unless a database and Redis are set)",
    )
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    serve.add_argument("--port", type=int, default=8000, help="port to listen on (default 8000)")
    serve.add_argument(
        "--workers",
        type=int,
        default=1,
        help="server processes sharing the port (default 1; more than 1 needs PHASESCREEN_REDIS_URL): one Python "
        "process serves requests on one core at a time, so use about one per core the API may have",
    )
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
    create.add_argument(
        "--tenant",
        default=None,
        help="the tenant the key belongs to; keys of one tenant share their screenings and batches "
        "(default: a tenant of its own)",
    )
    create.add_argument(
        "--scope",
        action="append",
        default=[],
        metavar="SCOPE",
        help="screen (submit, cancel), read (read, list), report (report training-run outcomes) or admin "
        "(/metrics); repeatable or comma-separated (default: screen,read,report)",
    )
    create.add_argument("--expires-in", type=float, default=None, metavar="DAYS", help="the key expires after DAYS")
    create.add_argument(
        "--rate-limit", type=int, default=None, help="requests per minute of the key's tenant while it uses this key"
    )
    create.set_defaults(func=_apikey_create)
    listing = apikey_sub.add_parser("list", help="list keys (never their secrets)")
    listing.add_argument("--tenant", default=None, help="only this tenant's keys")
    listing.set_defaults(func=_apikey_list)
    revoke = apikey_sub.add_parser("revoke", help="revoke a key at once (by id, or by the prefix `list` shows)")
    revoke.add_argument("key", metavar="ID_OR_PREFIX")
    revoke.set_defaults(func=_apikey_revoke)
    apikey.set_defaults(func=functools.partial(_usage, apikey))


def _configure_logging(settings: ServiceSettings) -> None:
    """PHASESCREEN_LOG_FORMAT lines (JSON by default) on stderr, for this process and its libraries."""
    from store import logs

    logs.configure(settings.log_level, settings.log_format)


def _serve(args: argparse.Namespace) -> int:
    import uvicorn

    from service.app import create_app
    from service.settings import ApiSettings

    settings = ApiSettings()
    _configure_logging(settings)
    # the app resolves X-Forwarded-For itself against PHASESCREEN_TRUSTED_PROXIES; uvicorn's own handling
    # (which trusts 127.0.0.1 by default) stays off so there is one rule, not two
    # log_config=None: uvicorn keeps the handler configured above; its access lines are replaced by the
    # app's own (service.requestlog: route template, status, duration and ids, as JSON)
    options: dict[str, Any] = {
        "host": args.host,
        "port": args.port,
        "log_level": settings.log_level.lower(),
        "log_config": None,
        "access_log": False,
        "proxy_headers": False,
    }
    if args.workers != 1:
        return _serve_processes(args.workers, settings, options)
    app = create_app(settings, freeze_after_startup=True)
    try:
        uvicorn.run(app, workers=1, **options)  # workers=1: a WEB_CONCURRENCY in the environment is not ours
    finally:  # in-process jobs hand their rows back instead of holding the exit for an hour
        app.state.runtime.close()
    return 0


def _serve_processes(workers: int, settings: ServiceSettings, options: dict[str, Any]) -> int:
    """``workers`` uvicorn processes, each with its own app built from the environment (``app_factory``)."""
    import os

    import uvicorn

    if not 1 < workers <= 64:
        print("phasescreen serve: --workers must be between 1 and 64", file=sys.stderr)
        return 2
    if not settings.redis_url:  # in-process jobs, rate limits and reconciler would each be per process
        print(
            "phasescreen serve: --workers above 1 needs PHASESCREEN_REDIS_URL (the embedded deployment runs its "
            "jobs inside the one server process)",
            file=sys.stderr,
        )
        return 2
    if settings.should_migrate:  # once, here, not racing in every process
        from store.db import upgrade

        upgrade(settings.sqlalchemy_url)
    os.environ["PHASESCREEN_AUTO_MIGRATE"] = "false"
    from cli import processes

    if processes.supported():  # one listener per process: the kernel spreads the connections evenly
        return processes.serve(workers, {**options, "app": "cli.server:app_factory", "factory": True})
    uvicorn.run("cli.server:app_factory", factory=True, workers=workers, **options)
    return 0


def app_factory() -> Any:
    """The app of one ``serve --workers N`` process, from the environment (uvicorn imports and calls this)."""
    from service.app import create_app
    from service.settings import ApiSettings

    settings = ApiSettings()
    _configure_logging(settings)
    return create_app(settings, freeze_after_startup=True)


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
    from datetime import timedelta

    from store.apikeys import DEFAULT_SCOPES, create_api_key
    from store.db import local_session
    from store.models import utcnow

    expires_at = None
    if args.expires_in is not None:
        if args.expires_in <= 0:
            print("--expires-in must be a positive number of days", file=sys.stderr)
            return 2
        expires_at = utcnow() + timedelta(days=args.expires_in)
    scopes = ",".join(args.scope) or ",".join(DEFAULT_SCOPES)
    with local_session() as session:
        try:
            key, secret = create_api_key(
                session,
                args.name,
                tenant=args.tenant,
                scopes=scopes,
                expires_at=expires_at,
                rate_limit_per_minute=args.rate_limit,
            )
        except ValueError as exc:
            print(f"phasescreen apikey create: {exc}", file=sys.stderr)
            return 2
        session.commit()
        print(secret)
        expiry = f", expires {key.expires_at:%Y-%m-%d %H:%M} UTC" if key.expires_at else ""
        print(
            f"key {key.id} ({args.name}, tenant {key.tenant}, scopes {key.scopes}{expiry}) created; "
            "the secret above is shown only once",
            file=sys.stderr,
        )
    return 0


def _apikey_list(args: argparse.Namespace) -> int:
    from store.apikeys import list_api_keys
    from store.db import local_session
    from store.models import utcnow

    def when(value: object) -> str:
        return f"{value:%Y-%m-%d %H:%M}" if value else "-"

    now = utcnow()
    with local_session() as session:
        keys = list_api_keys(session, tenant=args.tenant)
        header = ("ID", "PREFIX", "NAME", "TENANT", "SCOPES", "STATUS", "CREATED", "LAST USED", "EXPIRES")
        rows = [header]
        for key in keys:
            status = "revoked" if key.revoked_at else "expired" if key.expires_at and key.expires_at <= now else "live"
            rows.append(
                (
                    key.id,
                    key.prefix,
                    key.name,
                    key.tenant,
                    key.scopes,
                    status,
                    when(key.created_at),
                    when(key.last_used_at),
                    when(key.expires_at),
                )
            )
    widths = [max(len(str(row[i])) for row in rows) for i in range(len(header))]
    for row in rows:
        print("  ".join(str(cell).ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip())
    return 0


def _apikey_revoke(args: argparse.Namespace) -> int:
    from store.apikeys import revoke_api_key
    from store.db import local_session

    with local_session() as session:
        if not revoke_api_key(session, args.key):
            print(f"no live key {args.key} (unknown, ambiguous prefix, or revoked already)", file=sys.stderr)
            return 1
        session.commit()
    print(f"key {args.key} revoked", file=sys.stderr)
    return 0


def _redacted(url: str) -> str:
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True)
