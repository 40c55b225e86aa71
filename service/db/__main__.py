"""``python -m service.db upgrade|downgrade REV|current``: the store's migrations, for the NORMGATE_* settings.

The service migrates at start-up by itself; this is for operators who migrate before a rollout, check the
revision, or step back after one. Exit status 0 on success, 2 when the database cannot be reached or migrated.
"""

from __future__ import annotations

import argparse
import logging
import sys

from service.config import get_settings
from service.db.engine import StoreConfigError, describe_url, make_engine
from service.db.migrate import current_revision, downgrade, head_revision, upgrade


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m service.db", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    up = sub.add_parser("upgrade", help="migrate to the newest revision (or REV)")
    up.add_argument("revision", nargs="?", default="head")
    down = sub.add_parser("downgrade", help="migrate back to REV ('base' drops the store's tables)")
    down.add_argument("revision")
    sub.add_parser("current", help="print the revision the database is at, and the newest one")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    settings = get_settings()
    url = settings.store_url
    try:
        engine = make_engine(url)
        if args.command == "upgrade":
            revision = upgrade(engine, args.revision)
            print(f"{describe_url(url)}: at revision {revision}")
        elif args.command == "downgrade":
            revision = downgrade(engine, args.revision)
            print(f"{describe_url(url)}: at revision {revision or 'base (no tables)'}")
        else:
            print(f"{describe_url(url)}: at revision {current_revision(engine) or 'base'}; newest {head_revision()}")
    except StoreConfigError as exc:
        print(f"normgate: error: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:  # the database is down, refuses the login, …: one line, no traceback
        print(f"normgate: error: {describe_url(url)}: {type(exc).__name__}: {_first_line(exc)}", file=sys.stderr)
        return 2
    return 0


def _first_line(exc: Exception) -> str:
    return (str(exc).strip().splitlines() or [""])[0]


if __name__ == "__main__":
    sys.exit(main())
