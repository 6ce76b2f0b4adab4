"""The MLflow connection: importing mlflow quietly, HTTP settings, and :class:`SafeMlflow`.

Tracking never costs a run: every MLflow call of a training run goes through
:class:`SafeMlflow`, which turns any failure (server down, timeout, bad store) into one
warning naming what was not logged and stops talking to the server after the first
connection failure. The run folder keeps everything needed to log it later:
``python -m pipeline.relog RUN_DIR``.

The store is MLflow's default (``sqlite:///mlflow.db``) unless ``MLFLOW_TRACKING_URI`` says
otherwise; a relative sqlite path is the project's (:func:`resolve_tracking_uri`: in a queued
or ``--temp`` DVC experiment, the original checkout's, not the temporary copy's).
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import unquote

#: MLflow 3's default store, a sqlite file relative to the project root.
DEFAULT_TRACKING_URI = "sqlite:///mlflow.db"
#: Set by DVC for every stage: the project's root. In a queued or ``--temp`` experiment the
#: stage runs in a temporary copy (``.dvc/tmp/exps/tmpXXX``, deleted afterwards) and this
#: still names the original checkout (DVC's queue passes it on: dvc/repo/experiments/queue/base.py).
DVC_ROOT_ENV = "DVC_ROOT"

#: MLflow's HTTP client settings while this project talks to a server: short timeouts and few
#: retries, so a dead server costs a training run seconds, not minutes per call. Applied by
#: :func:`apply_http_defaults` when a connection is made, each only where the environment
#: does not set it already.
HTTP_DEFAULTS = {
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "5",
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
}

#: Loggers whose INFO lines are bookkeeping, not news: the system-metrics thread starting and
#: stopping, the SQL store creating its tables (alembic migrations) on first use.
_CHATTY_LOGGERS = (
    "mlflow.system_metrics",
    "mlflow.store.db.utils",
    "alembic",
    "mlflow.pyfunc",
    "mlflow.store.model_registry.abstract_store",
    "mlflow.tracking._model_registry.client",
)


class TrackingWarning(UserWarning):
    """MLflow could not be reached or failed: something was not logged (the run goes on)."""


def apply_http_defaults() -> None:
    """Set each of :data:`HTTP_DEFAULTS` the environment leaves unset. MLflow reads them from
    the environment at every request (its client takes no timeout argument), and the
    system-metrics thread and a registered model's upload make requests too, so the
    environment is the one place that reaches them all."""
    for name, value in HTTP_DEFAULTS.items():
        os.environ.setdefault(name, value)


def quiet_mlflow_logging() -> None:
    """Raise MLflow's bookkeeping loggers to WARNING: a clean run prints nothing from MLflow."""
    for name in _CHATTY_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)
    # Artifact downloads (logging a model validates its input example through one; fetching a
    # registered model; the tables' small files) draw a tqdm bar per file into logs; a user's
    # own setting wins.
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    # MLflow's SQL store (the default sqlite:///mlflow.db) uses a SQLAlchemy option SQLAlchemy
    # deprecates: MLflow's to fix, nothing a user of this project can act on.
    warnings.filterwarnings(
        "ignore", message=r"(?s).*``noload`` loader strategy is deprecated", module=r"mlflow\.store"
    )


def mlflow_module() -> Any:
    """``mlflow``, ready to connect: HTTP defaults applied, bookkeeping logs quiet. Every
    path of this package that talks to a server gets mlflow from here."""
    try:
        import mlflow
    except ImportError as exc:  # pragma: no cover - mlflow is a pipeline dependency
        raise ImportError("MLflow tracking needs mlflow: pip install -e '.[pipeline]'") from exc
    apply_http_defaults()
    quiet_mlflow_logging()
    return mlflow


def project_root() -> Path:
    """Where a relative store lives: ``$DVC_ROOT`` under DVC (the original checkout, also for
    a queued or temporary experiment), else the working directory."""
    return Path(os.environ.get(DVC_ROOT_ENV) or os.getcwd()).absolute()


def resolve_tracking_uri(tracking_uri: str | None) -> str:
    """The store to use: ``tracking_uri``, else ``MLFLOW_TRACKING_URI``, else
    :data:`DEFAULT_TRACKING_URI`; a relative sqlite path made absolute under
    :func:`project_root` (a DVC experiment's temporary copy would lose a store inside it).
    Imports nothing: the name is known before any connection, for every warning."""
    uri = tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_TRACKING_URI
    path = sqlite_path(uri)
    if path is not None and not path.is_absolute():
        rest = uri[len("sqlite:///") :].partition("?")[2]
        return f"sqlite:///{project_root() / path}" + (f"?{rest}" if rest else "")
    return uri


def sqlite_path(uri: str) -> Path | None:
    """The database file of a ``sqlite:///PATH`` URI (relative or ``sqlite:////abs``), else ``None``."""
    if not uri.startswith("sqlite:///"):
        return None
    path = unquote(uri[len("sqlite:///") :].partition("?")[0])
    return Path(path) if path and path != ":memory:" else None


@contextlib.contextmanager
def store_init_lock(uri: str) -> Iterator[None]:
    """Hold an exclusive lock file next to a sqlite store (``<db>.init-lock``) while the
    store is opened: MLflow creates and migrates a new database's tables on first open
    without a lock, so two processes starting on a fresh store collide ("duplicate column",
    a half-migrated schema) and one run goes untracked. No-op for other stores, on Windows,
    or where the folder is not writable (a store that cannot be created is MLflow's error)."""
    path = sqlite_path(uri)
    if path is None or os.name == "nt":
        yield
        return
    import fcntl

    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fh = open(path.with_name(path.name + ".init-lock"), "a")  # held across the yield
    except OSError:
        yield
        return
    with fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def client_for(tracking_uri: str | None) -> Any:
    """An ``MlflowClient`` for ``tracking_uri`` resolved by :func:`resolve_tracking_uri`; a
    sqlite store is opened (created, migrated) under :func:`store_init_lock`."""
    mlflow_module()
    from mlflow.tracking import MlflowClient

    uri = resolve_tracking_uri(tracking_uri)
    with store_init_lock(uri):
        return MlflowClient(uri)  # opens the tracking store, which creates every table


def metric(key: str, value: float, step: int, ts: int | None = None) -> Any:
    """An MLflow ``Metric`` entity for ``log_batch`` (timestamp: now, in ms, unless given)."""
    from mlflow.entities import Metric

    return Metric(key, float(value), ts if ts is not None else int(time.time() * 1000), int(step))


class SafeMlflow:
    """Calls MLflow, never raises: a failure warns once per kind and is remembered.

    After the first failure the tracker goes *offline*: later calls are skipped (no timeout
    per training step against a dead server) and only counted in ``failed``.
    """

    def __init__(self, tracking_uri: str | None = None) -> None:
        # resolved now, not at connect: a failing first connection names the store it tried
        self.tracking_uri = resolve_tracking_uri(tracking_uri)
        self.client: Any = None
        self.offline = False
        self.failed: dict[str, int] = {}
        self._warned: set[str] = set()

    def connect(self) -> Any:
        """The ``MlflowClient``, made on first use."""
        if self.client is None:
            self.client = client_for(self.tracking_uri)
        return self.client

    def call(self, what: str, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """``fn(*args, **kwargs)``, or ``None`` after a :class:`TrackingWarning` naming ``what``
        (once per ``what``) when it raises or the tracker is already offline."""
        if self.offline:
            self.failed[what] = self.failed.get(what, 0) + 1
            return None
        try:
            return fn(*args, **kwargs)
        except Exception as exc:  # noqa: BLE001 - tracking must never end a run
            self.failed[what] = self.failed.get(what, 0) + 1
            self.offline = True
            if what not in self._warned:
                self._warned.add(what)
                warnings.warn(
                    f"MLflow ({self.tracking_uri}) failed: {type(exc).__name__}: {str(exc)[:300]}; not logged: "
                    f"{what} (and everything after it in this run); training goes on, local outputs are "
                    "complete: re-log later with `python -m pipeline.relog RUN_DIR`",
                    TrackingWarning,
                    stacklevel=2,
                )
            return None


@contextlib.contextmanager
def fluent_uri(uri: str) -> Iterator[None]:
    """Point MLflow's fluent API (``log_model`` needs it) at ``uri`` for a moment, then put
    back both the process-wide URI and ``MLFLOW_TRACKING_URI`` exactly as they were."""
    mlflow = mlflow_module()
    from mlflow.tracking._tracking_service import utils as tu

    old_uri, old_env = getattr(tu, "_tracking_uri", None), os.environ.get("MLFLOW_TRACKING_URI")
    mlflow.set_tracking_uri(uri)
    try:
        yield
    finally:
        if hasattr(tu, "_tracking_uri"):
            tu._tracking_uri = old_uri
        if old_env is None:
            os.environ.pop("MLFLOW_TRACKING_URI", None)
        else:
            os.environ["MLFLOW_TRACKING_URI"] = old_env
