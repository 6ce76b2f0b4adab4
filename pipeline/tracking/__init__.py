"""MLflow tracking for simsc runs, one concern per module:

- :mod:`.client`: importing mlflow, HTTP defaults (set when a connection is made, never at
  import), :class:`~.client.SafeMlflow` (a failing server costs a run nothing);
- :mod:`.runs`: run identity (name, tags, params, experiment) and ``RUN_DIR/tracking.json``;
- :mod:`.callback`: :class:`~.callback.MlflowCallback`, a training run logged live;
- :mod:`.models`: a checkpoint as a logged, registered MLflow model, and fetched back;
- :mod:`.results`: final PCK, the PCK table, the report stage's upload;
- :mod:`.champion`: the registry's ``champion`` alias rule.

Re-logging a finished run is :mod:`pipeline.relog`. The project's own code imports from the
submodules (so a DVC stage depends on the modules it uses); the names below stay reachable
as ``pipeline.tracking.NAME`` for callers outside it, imported on first use (PEP 562).
"""

from simsc._lazy import lazy_attributes

_LAZY = {
    "SafeMlflow": "client",
    "TrackingWarning": "client",
    "describe_run": "runs",
    "git_revision": "runs",
    "run_page_url": "runs",
    "MlflowCallback": "callback",
    "fetch_checkpoint": "models",
    "log_checkpoint_model": "models",
    "load_reports": "results",
    "log_report": "results",
    "log_results": "results",
    "pck_table": "results",
    "ChampionWarning": "champion",
    "champion_rule": "champion",
    "promote_champion": "champion",
}

__getattr__, __dir__ = lazy_attributes(__name__, _LAZY, globals())
