"""``python -m pipeline.exp [dvc exp run args]`` (``make exp ARGS=...``): one DVC experiment
that does not leak into the next.

``dvc exp run -S key=value`` writes the value into the workspace's ``params.yaml`` and leaves
it there (DVC 3.67: the experiment's params stay applied in the workspace, also when the run
fails, a mistyped ``-S ++model.backbon=...`` included). A second ``dvc exp run -n seed1 -S
++train.seed=1`` then silently runs with the first one's values too. This wrapper runs ``dvc
exp run`` with the given arguments and puts ``params.yaml`` back byte for byte afterwards,
whatever happened: each experiment starts from the committed parameters plus its own ``-S``.
The experiment itself (params, metrics, outputs) is kept by DVC: ``dvc exp show``, ``dvc exp
apply NAME``. ``dvc exp run --temp`` / ``--queue`` also leave the workspace alone, but run in
a temporary folder, where ``sqlite:///mlflow.db`` is that folder's store: the MLflow run
would be lost with it.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

PARAMS = Path("params.yaml")


def run_experiment(args: Sequence[str], params: Path = PARAMS, dvc: str = "dvc") -> int:
    """``dvc exp run ARGS``, then ``params`` restored to its bytes from before; the exit status."""
    before = params.read_bytes()
    try:
        return subprocess.run([dvc, "exp", "run", *args], check=False).returncode
    except KeyboardInterrupt:
        return 130
    finally:
        if params.read_bytes() != before:
            tmp = params.with_name(params.name + ".restore")
            tmp.write_bytes(before)
            os.replace(tmp, params)
            print(f"exp: {params} restored (the experiment's -S values stay in the experiment only)", file=sys.stderr)


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if args[:1] in (["-h"], ["--help"]):
        print(__doc__)
        return 0
    return run_experiment(args)


if __name__ == "__main__":
    sys.exit(main())
