"""Database URLs of the shared stores (s2s/stores.py): passwords hidden, problems said on one line, fast.
The stores themselves (PostgreSQL, an mlflow server) are exercised by tests/test_shared_stores.py."""
from __future__ import annotations

import time

import pytest

from s2s.stores import database_problem, redact
from s2s.tracking import ui_command


@pytest.mark.parametrize("url, shown", [
    ("postgresql://me:secret@db:5432/optuna", "postgresql://me:***@db:5432/optuna"),
    ("postgresql://me:se:cr@et@db/optuna", "postgresql://me:***@db/optuna"),  # unescaped ':' and '@' in it
    ("postgresql+psycopg://me@db/optuna", "postgresql+psycopg://me@db/optuna"),  # nothing to hide
    ("http://u:p@mlflow:5000", "http://u:***@mlflow:5000"),
    ("sqlite:////abs/mlruns/optuna.db", "sqlite:////abs/mlruns/optuna.db"),
])
def test_redact_hides_only_the_password(url, shown):
    assert redact(url) == shown


@pytest.mark.parametrize("url, says", [
    ("postgresql://u@127.0.0.1:9/db", "Connection refused"),
    ("postgresql+psycopg2://u@127.0.0.1:9/db", "pip install 'psycopg2-binary'"),
    ("postgres://u@127.0.0.1:9/db", "PostgreSQL's scheme is postgresql://"),
])
def test_a_database_problem_is_one_line_within_seconds(url, says):
    started = time.time()
    why = database_problem(url, timeout=2)
    assert time.time() - started < 10
    assert says in why and "\n" not in why and "sqlalche.me" not in why


def test_files_and_servers_are_not_database_urls():
    assert database_problem("sqlite:////nonexistent/dir/x.db") is None
    assert database_problem("http://127.0.0.1:9") is None  # s2s.tracking.check_reachable asks the server


def test_the_ui_of_a_tracking_server_is_the_server():
    assert ui_command("http://127.0.0.1:5000").startswith("http://127.0.0.1:5000 in a browser")
    assert ui_command("sqlite:////m/mlflow.db").startswith("mlflow ui --backend-store-uri 'sqlite:////m/mlflow.db'")
    assert "secret" not in ui_command("postgresql://me:secret@db/mlflow")
