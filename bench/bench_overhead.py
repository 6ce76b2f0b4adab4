"""Train-step overhead: the full SimSC step (``model.loss`` + backward) vs the backbone alone.

Same inputs on both sides: the 2B images of a pair batch concatenated (what ``SimSC.forward``
feeds the backbone). The baseline is ``backbone(images)`` + a trivial loss (mean square of the
feature map) + backward; the SimSC step adds the temperature MLP, L2 norm, query score maps,
cross-entropy and the regulariser. ``finetune='last_block'`` (the paper's setting) on both
sides, random weights (speed does not depend on them). No optimiser step on either side.
Interleaved repetitions, medians; overhead = simsc / backbone - 1, one SimSC column per
``--ce-interpolation`` form (``prob``: the paper's log of the interpolated probability;
``logprob``: the splatted target), all measured in the same interleaved run.

    .venv/bin/python -m bench.bench_overhead [--backbones resnet50,resnet101,dino_vitb8] [--size 256]
        [--batch 8] [--kps 16] [--reps 5] [--device cpu] [--ce-interpolation prob,logprob]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from bench._common import RESULTS, interleaved, machine, make_batch, med, table, write_json
from simsc.loss import simsc_loss
from simsc.model import SimSC


def measure(
    backbone: str,
    size: int,
    batch: int,
    kps: int,
    reps: int,
    device: str,
    finetune: str = "last_block",
    warmup: int = 1,
    forms: tuple[str, ...] = ("prob",),
) -> dict:
    torch.manual_seed(0)
    model = SimSC(backbone, "mlp", pretrained=False, finetune=finetune).to(device).train()
    data = make_batch(batch, size, kps, device)
    images = torch.cat([data["src_img"], data["trg_img"]])

    def simsc_step(form: str):
        def step():
            model.ce_interpolation = form
            model.zero_grad(set_to_none=True)
            model.loss(data)["loss"].backward()

        return step

    def backbone_step():
        model.zero_grad(set_to_none=True)
        model.backbone(images).float().square().mean().backward()

    fns = {f"simsc_{form}": simsc_step(form) for form in forms}
    t = interleaved({**fns, "backbone": backbone_step}, reps, warmup, device)
    b = med(t["backbone"])
    row = {
        "backbone": backbone,
        "size": size,
        "batch_pairs": batch,
        "kps": kps,
        "finetune": finetune,
        "device": device,
        "reps": reps,
        "backbone_s": t["backbone"],
        "backbone_median_s": b,
    }
    for form in forms:
        a = med(t[f"simsc_{form}"])
        row[form] = {"simsc_s": t[f"simsc_{form}"], "simsc_median_s": a, "overhead": a / b - 1.0}
    # The first form is the headline (the default, prob): keep the flat keys other benchmarks read.
    row.update({k: row[forms[0]][k] for k in ("simsc_s", "simsc_median_s", "overhead")})
    if device == "cpu":
        row["loss_head_s"] = loss_head(model, size, batch, kps, forms)
    return row


def loss_head(model: SimSC, size: int, batch: int, kps: int, forms: tuple[str, ...], reps: int = 200) -> dict:
    """The loss head alone (score maps -> cross-entropy, forward + backward) per form: the part
    that differs between the forms, timed precisely enough to state as a fraction of the step."""
    h = w = -(-size // model.stride)
    g = torch.Generator().manual_seed(0)
    scores = (torch.randn(batch, kps, h, w, generator=g) * 10).requires_grad_(True)
    uv_b = torch.rand(batch, kps, 2, generator=g) * torch.tensor([w - 1.0, h - 1.0])
    valid = torch.ones(batch, kps, dtype=torch.bool)
    out = {}
    for form in forms:
        times = []
        for _ in range(reps):
            t0 = time.perf_counter()
            scores.grad = None
            simsc_loss(scores, uv_b, valid, ce_interpolation=form)["loss"].backward()
            times.append(time.perf_counter() - t0)
        out[form] = med(times)
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--backbones", default="resnet50,resnet101,dino_vitb8")
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--batch", type=int, default=8, help="pairs (the backbone sees 2x as many images)")
    ap.add_argument("--kps", type=int, default=16)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--finetune", default="last_block", choices=["last_block", "all", "none"])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--ce-interpolation", default="prob,logprob", help="forms to time (default: prob,logprob)")
    ap.add_argument("--out", type=Path, default=RESULTS / "overhead.json")
    args = ap.parse_args(argv)
    forms = tuple(f for f in args.ce_interpolation.split(",") if f)
    rows = [
        measure(b, args.size, args.batch, args.kps, args.reps, args.device, args.finetune, args.warmup, forms)
        for b in args.backbones.split(",")
    ]
    headers = ["backbone", "size", "pairs", "kps", "finetune", "backbone s/step"]
    headers += [h for f in forms for h in (f"simsc[{f}] s/step", f"overhead[{f}]")]
    if len(forms) > 1:
        headers.append(f"{forms[0]} vs {forms[1]} (of the step)")
    lines = []
    for r in rows:
        line = [r["backbone"], r["size"], r["batch_pairs"], r["kps"], r["finetune"], f"{r['backbone_median_s']:.4f}"]
        line += [v for f in forms for v in (f"{r[f]['simsc_median_s']:.4f}", f"{100 * r[f]['overhead']:+.1f}%")]
        if len(forms) > 1:
            line.append(f"{100 * (r[forms[0]]['simsc_median_s'] / r[forms[1]]['simsc_median_s'] - 1):+.2f}%")
        lines.append(line)
    print(table(headers, lines))
    for r in rows:
        if "loss_head_s" in r:
            heads = r["loss_head_s"]
            print(
                f"{r['backbone']}: loss head alone (fwd + bwd, median of 200): "
                + ", ".join(
                    f"{f} {1e3 * t:.2f} ms ({100 * t / r['backbone_median_s']:.2f}% of the backbone step)"
                    for f, t in heads.items()
                )
            )
    write_json(args.out, {"rows": rows, "machine": machine()})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
