"""Default values written once: the paper's (Sec. 4.2 and the supplement), and the few settings
the schema shares with library signatures and command lines.

The configuration schema (:mod:`simsc.config`) and the library's function signatures
(:class:`simsc.model.SimSC`, :func:`simsc.soft_argmax.kernel_soft_argmax`, the datasets,
:func:`simsc.evaluate.evaluate`) read their defaults from here, so a default changed here
changes everywhere. Settings that are not the paper's (run folders, progress, devices) are
written once in the schema itself. This module imports nothing, so every module of the
library, torch-free ones included, can read it.

``tests/test_defaults.py`` fails when a config file, sweep profile, command line or function
signature restates one of these values.
"""

from __future__ import annotations

# --- model (Sec. 3, Sec. 4.2) -------------------------------------------------------------------
#: The backbone of the main results (Tab. 1) and the fine-tuned part of it.
BACKBONE = "resnet101"
FINETUNE = "last_block"
#: The learned temperature module (Sec. 3.2): an MLP on the pooled features.
TEMPERATURE = "mlp"
#: Kernel soft-argmax window n_s and Gaussian sigma (Eq. 4); CE neighbourhood n_k (Eq. 3).
NS = 3
NK = 5
SIGMA = 7.0
#: Weight of L_reg and its threshold beta_thres (Eq. 6).
GAMMA = 0.2
BETA_THRES = 0.1
#: Eq. 3: the log of the bilinearly interpolated probability.
CE_INTERPOLATION = "prob"
#: L_reg(beta_A) + L_reg(beta_B) over the pair's two images.
REG_OVER_IMAGES = "sum"
#: Feature cells sit at the backbone's declared centres.
CELL_CENTRE = "backbone"
#: SimSC has no matching head; a head (supplement Sec. 5) is built at its paper's sizes.
HEAD = "none"
HEAD_PRESET = "paper"

# --- data and evaluation (Sec. 4.1) ---------------------------------------------------------------
#: Square image size of training and evaluation, in pixels.
RESOLUTION = 256
TRAIN_BATCH_SIZE = 8
EVAL_BATCH_SIZE = 8
#: PCK thresholds reported by the field.
ALPHAS: tuple[float, ...] = (0.05, 0.1, 0.15)

# --- optimisation (Sec. 4.2; supplement Sec. 6 for ``single``) ------------------------------------
EPOCHS = 100
#: Backbone learning rate by fine-tuning mode.
LR_BACKBONE: dict[str, float] = {"last_block": 1e-4, "all": 2e-5}
#: Temperature learning rate by temperature module.
LR_TEMPERATURE: dict[str, float] = {"mlp": 1e-4, "single": 5e-3}
#: Matching heads (supplement Sec. 5 gives no rate): the backbone's rate for the last block.
LR_HEAD = LR_BACKBONE["last_block"]

# --- settings the schema shares with library signatures and command lines ---------------------
SEED = 0
#: "auto": CUDA when available, else the CPU.
DEVICE = "auto"
#: DataLoader worker processes (0: load in the main process).
WORKERS = 0
#: Progress of long loops: a bar on a terminal, plain lines in logs (simsc.progress).
PROGRESS = "auto"
PROGRESS_EVERY_S = 20.0
