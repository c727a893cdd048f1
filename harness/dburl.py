"""Database URLs handed to SQLAlchemy (Optuna's storage, an MLflow server's backend store). A plain
`postgresql://` URL makes SQLAlchemy 2.1 ask for psycopg 3 while the `postgres` extra installs psycopg2,
so the installed driver is written into the URL.
"""
from __future__ import annotations

import importlib.util

# Drivers for a plain postgresql:// URL, in order of preference, with the module that provides each.
PG_DRIVERS = {"psycopg2": "psycopg2", "psycopg": "psycopg"}


def installed_pg_driver() -> str | None:
    """The first PostgreSQL driver of `PG_DRIVERS` that is installed, or None."""
    return next((driver for driver, module in PG_DRIVERS.items() if importlib.util.find_spec(module) is not None), None)


def with_installed_driver(url: str) -> str:
    """A plain PostgreSQL `url` with the installed driver named; any other URL unchanged."""
    scheme, sep, rest = url.partition("://")
    if scheme not in ("postgresql", "postgres") or not sep:
        return url
    driver = installed_pg_driver()
    return f"postgresql+{driver}://{rest}" if driver else url
