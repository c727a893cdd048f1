"""Database URLs the harness hands to SQLAlchemy (Optuna's storage, an MLflow server's backend store).

A plain `postgresql://` URL makes SQLAlchemy 2.1 ask for psycopg 3, while the `postgres` extra
installs psycopg2: the driver that is installed is written into the URL instead, so the README's URL
form works as it is.
"""
from __future__ import annotations

import importlib.util

# Drivers for a plain postgresql:// URL, in order of preference, with the module that provides each.
PG_DRIVERS = {"psycopg2": "psycopg2", "psycopg": "psycopg"}


def installed_pg_driver() -> str | None:
    """The first PostgreSQL driver of `PG_DRIVERS` that is installed, or None."""
    for driver, module in PG_DRIVERS.items():
        if importlib.util.find_spec(module) is not None:
            return driver
    return None


def with_installed_driver(url: str) -> str:
    """`url` with the installed PostgreSQL driver named (`postgresql+psycopg2://...`) when it names
    none; any other URL unchanged.

    >>> with_installed_driver("sqlite:////tmp/x.db")
    'sqlite:////tmp/x.db'
    """
    scheme, sep, rest = url.partition("://")
    if scheme not in ("postgresql", "postgres") or not sep:
        return url
    driver = installed_pg_driver()
    return f"postgresql+{driver}://{rest}" if driver else url
