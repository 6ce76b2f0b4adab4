"""A simsc checkpoint as an MLflow model: logged (pyfunc from code, signature, input example,
pinned requirements, ``simsc`` shipped as code), registered, and fetched back as a ``.pt``
file (the ``models:`` / ``runs:`` resolver of :mod:`simsc.model_uri`). The model class
itself is :mod:`pipeline.mlflow_model`, the file MLflow copies into the model."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .client import fluent_uri, mlflow_module
from .runs import git_revision, params_hash

#: What loading the model imports besides ``simsc`` (shipped as code) and mlflow: pinned to
#: the versions installed here, so the model installs the way it was trained.
MODEL_REQUIREMENTS = ("torch", "torchvision", "timm", "numpy", "pillow", "pyyaml")


def model_requirements() -> list[str]:
    """``name==version`` for each of :data:`MODEL_REQUIREMENTS`, from this environment."""
    from importlib.metadata import version

    return [f"{name}=={version(name)}" for name in MODEL_REQUIREMENTS]


def model_example(n_points: int = 4, size: int = 64) -> dict[str, Any]:
    """A small input pair for the model's input example: two normalised random images of
    ``size`` pixels (seeded) and ``n_points`` source keypoints inside them."""
    import numpy as np

    rng = np.random.default_rng(0)
    src, trg = (rng.standard_normal((1, 3, size, size)).astype(np.float32) for _ in range(2))
    kps = rng.uniform(0, size - 1, (1, n_points, 2)).astype(np.float32)
    return {"src_img": src, "trg_img": trg, "src_kps": kps}


def model_signature() -> Any:
    """Tensor signature with free batch, image size and point count (any resolution works;
    a signature inferred from the example would pin them to the example's)."""
    import numpy as np
    from mlflow.models.signature import ModelSignature
    from mlflow.types.schema import Schema, TensorSpec

    f32 = np.dtype(np.float32)
    inputs = Schema(
        [
            TensorSpec(f32, (-1, 3, -1, -1), "src_img"),
            TensorSpec(f32, (-1, 3, -1, -1), "trg_img"),
            TensorSpec(f32, (-1, -1, 2), "src_kps"),
        ]
    )
    return ModelSignature(inputs=inputs, outputs=Schema([TensorSpec(f32, (-1, -1, 2))]))


#: The ``step`` handed to ``log_model``: one no metric is logged at, so MLflow links none itself.
NO_METRIC_STEP = -1
#: The per-epoch metrics (:func:`pipeline.tracking.callback.epoch_metrics`, step = the epoch).
EPOCH_METRIC_PREFIXES = ("val_pck_", "val_beta_eff", "train_loss_epoch")


def link_best_metrics(client: Any, run_id: str, model_id: str, epoch: int) -> int:
    """Attach the run's per-epoch metrics of ``epoch`` (the best checkpoint's) to the logged
    model ``model_id``, as MLflow's ``log_model(step=...)`` would, but only those (a step
    metric logged at the same step number is a training step, not this epoch). Returns how
    many were linked."""
    from mlflow.entities import Metric

    keys = [k for k in client.get_run(run_id).data.metrics if k.startswith(EPOCH_METRIC_PREFIXES)]
    linked = []
    for key in keys:
        at_epoch = [m for m in client.get_metric_history(run_id, key) if m.step == epoch and m.model_id is None]
        if at_epoch:
            m = at_epoch[-1]
            linked.append(Metric(key, m.value, m.timestamp, m.step, run_id=run_id, model_id=model_id))
    if linked:
        client.log_batch(run_id, metrics=linked)
    return len(linked)


def log_checkpoint_model(
    client: Any, run_id: str, checkpoint: Path, registered_model: str | None, cfg: Mapping[str, Any]
) -> str | None:
    """Log ``checkpoint`` as a pyfunc model of the run (once: the checkpoint is the model's
    artifact; signature, input example, pinned requirements, ``simsc`` shipped as code) and
    register it; returns the version (``None`` without ``registered_model``)."""
    mlflow_module()
    import mlflow.pyfunc  # binds mlflow, with its pyfunc flavour loaded

    from simsc import (
        config as simsc_config,  # its folder is the package shipped with the model
    )
    from simsc.engine.checkpoint import load_checkpoint

    from .. import mlflow_model

    best_epoch = (load_checkpoint(checkpoint).get("best") or {}).get("epoch")
    tags = {"git_revision": git_revision(), "params_hash": params_hash(cfg)}
    with fluent_uri(client.tracking_uri):
        with mlflow.start_run(run_id=run_id, nested=mlflow.active_run() is not None):
            info = mlflow.pyfunc.log_model(
                name="model",
                python_model=mlflow_model.__file__,
                artifacts={"checkpoint": str(checkpoint)},
                code_paths=[str(Path(simsc_config.__file__).parent)],
                pip_requirements=model_requirements(),
                signature=model_signature(),
                input_example=model_example(),
                # MLflow copies the run's metrics at this step to the model; at its default (0)
                # the model showed epoch 0's validation PCK. No metric is logged at step -1:
                # link_best_metrics gives it the best epoch's instead.
                step=NO_METRIC_STEP,
            )
        if best_epoch is not None and info.model_id:
            link_best_metrics(client, run_id, info.model_id, int(best_epoch))
        if not registered_model:
            return None
        mv = mlflow.register_model(info.model_uri, registered_model, tags=tags)
    return str(mv.version)


def fetch_checkpoint(uri: str, dst: str | os.PathLike[str] | None = None) -> Path:
    """Download the simsc checkpoint of an MLflow model (``models:/<name>/<version>``,
    ``runs:/<id>/model``, ...) and return the local ``.pt`` path."""
    mlflow = mlflow_module()
    local = Path(mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=str(dst) if dst else None))
    if local.is_file():
        return local
    found = sorted(local.rglob("*.pt"))
    if not found:
        raise FileNotFoundError(f"{uri}: no checkpoint (*.pt) in the downloaded model at {local}")
    return found[0]
