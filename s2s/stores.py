"""Database URLs of the stores s2s shares between processes and machines: the MLflow backend
(`tracking.uri`, or the database behind an `mlflow server`) and the Optuna storage (`--storage`).

    redact("postgresql://me:secret@db/optuna")    # 'postgresql://me:***@db/optuna', for messages and tags
    database_problem("postgresql://me@db/optuna") # None, or one line saying why it cannot be used

The check exists because the libraries fail slowly or noisily on a bad database URL: MLflow
retries a refused PostgreSQL connection for about 100 s (measured) before giving up, and the
drivers' messages span several lines.
"""
from __future__ import annotations

import re

# What to install for a driver that SQLAlchemy's default dialects import (SQLAlchemy >= 2.1 uses
# psycopg 3 for a plain postgresql:// URL).
DRIVER_PACKAGES = {"psycopg": "psycopg[binary]", "psycopg2": "psycopg2-binary", "pymysql": "pymysql",
                   "MySQLdb": "mysqlclient", "pyodbc": "pyodbc", "pymssql": "pymssql"}


def redact(url: str) -> str:
    """`url` with the password of its user part (scheme://user:password@host) replaced by ***: URLs
    end up in messages, printed commands and MLflow tags, which others read."""
    return re.sub(r"(://[^/@:]*):[^/]*@", r"\1:***@", url)  # to the last @ of the authority


def one_line(e: BaseException, limit: int = 300) -> str:
    """`TypeName: message` on one line, without SQLAlchemy's "(Background on this error ...)" tail."""
    text = re.sub(r"\(Background on this error at: [^)]*\)", "", str(e))
    text = re.sub(r"^\([\w.]+\)\s*", "", text.strip())  # SQLAlchemy's "(psycopg.OperationalError) " prefix
    text = " ".join(text.split())
    return f"{type(e).__name__}: {text[:limit]}" if text else type(e).__name__


def is_database(url: str) -> bool:
    """A SQLAlchemy database URL of a server (postgresql://, mysql+pymysql://, ...), not SQLite's file."""
    scheme = url.split("://", 1)[0] if "://" in url else ""
    return bool(re.fullmatch(r"(postgresql|postgres|mysql|mariadb|mssql)(\+\w+)?", scheme))


def database_problem(url: str, timeout: float = 5.0) -> str | None:
    """One line saying why the database server at `url` cannot be used (driver missing, refused,
    unknown database or user), or None when it answers a connection within `timeout` seconds.
    Non-server URLs (sqlite, http, file) are not looked at."""
    if not is_database(url):
        return None
    from sqlalchemy import create_engine, text  # local: only a command that names a database server needs it
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError, NoSuchModuleError
    from sqlalchemy.pool import NullPool

    try:
        parsed = make_url(url)
        timeout_arg = {"connect_timeout": max(1, int(timeout))} if parsed.get_backend_name() in (
            "postgresql", "mysql", "mariadb") else {}
        engine = create_engine(parsed, connect_args=timeout_arg, poolclass=NullPool)
    except ModuleNotFoundError as e:
        package = DRIVER_PACKAGES.get(e.name or "", e.name)
        return f"its Python driver is not installed ({e}): pip install '{package}' into this environment"
    except (ArgumentError, NoSuchModuleError, ValueError) as e:
        hint = "; PostgreSQL's scheme is postgresql://" if url.startswith("postgres://") else ""
        return f"not a database URL SQLAlchemy understands: {one_line(e)}{hint}"
    try:
        with engine.connect() as conn:
            conn.execute(text("SELECT 1"))
    except Exception as e:  # refused, unknown host, database or role, bad password: the driver's own words
        return one_line(e)
    finally:
        engine.dispose()
    return None
