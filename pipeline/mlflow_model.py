"""The MLflow model of a simsc checkpoint, logged as code (MLflow's "models from code").

MLflow copies this file into the logged model and runs it to load the model, so it holds
nothing but the model class: ``artifacts["checkpoint"]`` is the ``best.pt`` file and the
``simsc`` package travels with the model (``code/simsc``). Imported as
``pipeline.mlflow_model`` (for its path) it only defines the class.
"""

from __future__ import annotations

import mlflow.pyfunc
from mlflow.models import set_model


class SimSCModel(mlflow.pyfunc.PythonModel):
    """``predict`` takes a dict of arrays (``src_img``, ``trg_img``: ``[B, 3, H, W]``
    normalised images; ``src_kps``: ``[B, N, 2]`` source pixels) and returns the target
    keypoints ``[B, N, 2]`` in target-image pixels."""

    # The input (a dict of arrays) is described by the model's explicit tensor signature,
    # which MLflow enforces, not by type hints on predict. Without this MLflow warns at every
    # definition of the class (logging, validation, each load), under its own warning filter
    # that no caller can override; its own PythonModel subclasses set the same switch.
    _skip_type_hint_validation = True

    def load_context(self, context):
        from simsc.engine.checkpoint import load_model

        self.model, self.cfg, _ = load_model(context.artifacts["checkpoint"])

    def predict(self, context, model_input, params=None):
        import torch

        batch = {k: torch.as_tensor(model_input[k]) for k in ("src_img", "trg_img", "src_kps")}
        with torch.no_grad():
            return self.model.predict(batch["src_img"], batch["trg_img"], batch["src_kps"]).numpy()


if __name__ != "pipeline.mlflow_model":  # run by MLflow as the model's code
    set_model(SimSCModel())
