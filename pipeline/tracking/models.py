"""A simsc checkpoint as an MLflow model: logged (pyfunc from code, signature, input example,
pinned requirements, ``simsc`` shipped as code), registered, and fetched back as a ``.pt``
file (the ``models:`` / ``runs:`` resolver of :mod:`simsc.model_uri`). The model class
itself is :mod:`pipeline.mlflow_model`, the file MLflow copies into the model.

A registered version carries its checkpoint's SHA-256 (tag :data:`DIGEST_TAG`); a fetch
checks the downloaded bytes against it. Fetched checkpoints are kept once each, named by
their digest, in :func:`model_cache_dir` (a download's other files are removed at once).
"""

from __future__ import annotations

import os
import sys
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .client import client_for, fluent_uri, mlflow_module
from .runs import file_sha256, git_revision, params_hash

#: Model version tag: the SHA-256 of the registered checkpoint (``best.pt``) as logged.
DIGEST_TAG = "checkpoint.sha256"
#: Where fetched checkpoints are kept (``<sha256>.pt``); default ``$XDG_CACHE_HOME/simsc/models``
#: (``~/.cache/simsc/models``). Delete the folder to free the space; nothing else points into it.
CACHE_ENV = "SIMSC_MODEL_CACHE"

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
    client: Any,
    run_id: str,
    checkpoint: Path,
    registered_model: str | None,
    cfg: Mapping[str, Any],
    sha256: str | None = None,
) -> str | None:
    """Log ``checkpoint`` as a pyfunc model of the run (once: the checkpoint is the model's
    artifact; signature, input example, pinned requirements, ``simsc`` shipped as code) and
    register it; returns the version (``None`` without ``registered_model``). ``sha256``: the
    checkpoint's digest when the caller has it already (else it is computed)."""
    mlflow_module()
    import mlflow.pyfunc  # binds mlflow, with its pyfunc flavour loaded

    from simsc import (
        config as simsc_config,  # its folder is the package shipped with the model
    )
    from simsc.engine.checkpoint import load_checkpoint

    from .. import mlflow_model

    best_epoch = (load_checkpoint(checkpoint).get("best") or {}).get("epoch")
    tags = {
        "git_revision": git_revision(),
        "params_hash": params_hash(cfg),
        DIGEST_TAG: sha256 or file_sha256(checkpoint),
    }
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


def model_cache_dir() -> Path:
    """:data:`CACHE_ENV`, else ``$XDG_CACHE_HOME/simsc/models`` (``~/.cache/simsc/models``)."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "simsc" / "models"


class CheckpointDigestError(ValueError):
    """A registered version's checkpoint is not the one registered (its bytes changed)."""


def registered_version(client: Any, uri: str) -> Any:
    """The model version ``models:/NAME/N`` or ``models:/NAME@ALIAS`` names, else ``None``
    (``runs:/``, a logged model's ``models:/m-...``)."""
    if not uri.startswith("models:/"):
        return None
    rest = uri[len("models:/") :].strip("/")
    if "@" in rest:
        name, _, alias = rest.partition("@")
        return client.get_model_version_by_alias(name, alias)
    name, _, version = rest.rpartition("/")
    return client.get_model_version(name, version) if name and version.isdigit() else None


def fetch_checkpoint(uri: str, dst: str | os.PathLike[str] | None = None) -> Path:
    """The local ``.pt`` of the simsc checkpoint of an MLflow model (``models:/NAME/N``,
    ``models:/NAME@ALIAS``, ``runs:/ID/model``, ...), in :func:`model_cache_dir` (or ``dst``).

    A registered version's download must have the digest of its tag :data:`DIGEST_TAG`
    (:class:`CheckpointDigestError` naming the URI and both digests otherwise); a version
    registered before the tag existed is fetched with one warning line. A cached checkpoint
    with the tagged digest is used without a download. Errors name ``uri``, never the
    temporary folder the model was downloaded to (removed when done)."""
    mlflow = mlflow_module()
    client = client_for(None)
    mv = registered_version(client, uri)
    expected = mv.tags.get(DIGEST_TAG) if mv is not None else None
    cache = Path(dst) if dst else model_cache_dir()
    cached = cache / f"{expected}.pt"
    if expected and cached.is_file() and file_sha256(cached) == expected:
        return cached
    if mv is not None and not expected:
        print(
            f"warning: {uri} (v{mv.version}) has no {DIGEST_TAG} tag (registered before digests were "
            "recorded): its checkpoint is not verified",
            file=sys.stderr,
        )
    # the version itself, not the alias again: the bytes checked are the tagged version's
    source = f"models:/{mv.name}/{mv.version}" if mv is not None else uri
    cache.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".download-", dir=cache) as tmp:
        try:
            local = Path(
                mlflow.artifacts.download_artifacts(artifact_uri=source, dst_path=tmp, tracking_uri=client.tracking_uri)
            )
        except Exception as exc:  # noqa: BLE001 - MLflow names its temporary path, the user gave a URI
            first = str(exc).replace(tmp, "").strip().splitlines()[0] if str(exc).strip() else ""
            raise ValueError(f"{uri}: no such model or artifact ({type(exc).__name__}: {first})") from None
        found = [local] if local.is_file() else sorted(local.rglob("*.pt"))
        if not found or found[0].suffix != ".pt":
            raise ValueError(f"{uri}: not a simsc model: no checkpoint (*.pt) in it")
        actual = file_sha256(found[0])
        if expected and actual != expected:
            raise CheckpointDigestError(
                f"{uri}: the checkpoint's SHA-256 is {actual}, the registered version v{mv.version} "
                f"recorded {expected} (tag {DIGEST_TAG}): its artifact was replaced; not loading it"
            )
        out = cache / f"{actual}.pt"
        os.replace(found[0], out)  # same file system: the cache never holds a partial file
    return out
