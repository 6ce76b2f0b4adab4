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
    "client": ("SafeMlflow", "TrackingWarning"),
    "runs": ("describe_run", "git_revision", "run_page_url"),
    "callback": ("MlflowCallback",),
    "models": ("fetch_checkpoint", "log_checkpoint_model"),
    "results": ("load_reports", "log_report", "log_results", "pck_table"),
    "champion": ("ChampionWarning", "champion_rule", "promote_champion"),
}

__getattr__, __dir__, __all__ = lazy_attributes(__name__, _LAZY, globals())
