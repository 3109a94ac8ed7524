"""Time to accuracy: adapting a pretrained model vs training the quadratic network from scratch.

The paper's claim (QuadraNet V2, arXiv 2405.03192): reusing pretrained weights through a
zero-started quadratic term reaches a from-scratch high-order network's accuracy with
90-98.4% fewer GPU hours. This runs, one after another on one machine and on the built-in
data (`digits-shift`, the default of `qdeploy train`) or an ImageFolder given with --data:

    scratch   the quadratic EfficientNet-Lite0 from random weights (the paper's baseline)
    adapt     pretrained EfficientNet-Lite0 + zero-started quadratic terms
    finetune  the plain pretrained EfficientNet-Lite0, no quadratic term (for reference)

and reports each run's final and best val accuracy and the training time (`train_s`: the
optimizer-step clock, without evaluations or checkpoint writes) it needed to first reach the
scratch run's best accuracy; the ratio adapt/scratch is the paper's figure (bar <= 10%,
aim < 2%). Time to accuracy is read from metrics.jsonl evaluations every `--eval-every`
steps, so it is resolved to that many steps; the steps themselves are reported too (the
same batch size for every run), a figure that does not depend on the machine's load.

CPU defaults (about 15 minutes on 2 shared cores): 32x32 images (the digits are 8x8 scans:
32 px keeps every stroke; EfficientNet's stride-32 backbone ends on a 1x1 map), batch 16
(more updates per image: what a small CPU budget needs), 1 intra-op thread (steadier
timings on shared cores), scratch for 2 epochs (180 steps), adapt and finetune for 1;
adapt trains the primary too (--train-primary: on 32 px digits the frozen ImageNet features
alone learn several times slower). Step counts, not --minutes caps, bound the runs: a wall
clock cap would also count evaluations, which the adapt run does twice as often. Two
epochs are far from the scratch network's convergence; pass --epochs-scratch 15
--epochs-adapt 4 for a converged baseline (about 20 minutes at 32 px). The paper's regime,
a from-scratch schedule on natural images, needs a GPU: --data <ImageFolder> --image-size
224 --batch-size 64 --threads 0 --epochs-scratch 90 --epochs-adapt 5.

    python benchmarks/adapt_vs_scratch.py            # prints the table, writes JSON
    python benchmarks/adapt_vs_scratch.py --runs R --report-only   # the table again from runs in R
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.report import write_report  # noqa: E402
from qdeploy.commands.tables import print_table  # noqa: E402
from qdeploy.data import BUILTIN_DATA  # noqa: E402
from qdeploy.errors import exit_on_user_error  # noqa: E402
from qdeploy.training import TrainConfig, train  # noqa: E402
from qdeploy.training.metrics import first_reaching, time_to_target  # noqa: E402

RESULTS = Path(__file__).parent / "results" / "adapt_vs_scratch.json"


def run(mode: str, args: argparse.Namespace, epochs: int, minutes: float, lr: float, eval_every: int) -> dict:
    config = TrainConfig(mode=mode, data=args.data, out=str(args.runs / mode), epochs=epochs, max_minutes=minutes,
                         image_size=args.image_size, batch_size=args.batch_size, lr=lr,
                         eval_every=eval_every, train_primary=mode == "adapt" and args.train_primary,
                         device=args.device, seed=args.seed, progress=args.progress)
    return train(config).summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=BUILTIN_DATA, help="digits-shift or an ImageFolder directory")
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--epochs-scratch", type=int, default=2)
    parser.add_argument("--epochs-adapt", type=int, default=1, help="also for finetune")
    parser.add_argument("--minutes-scratch", type=float, default=None, help="optional wall-time cap (with evals)")
    parser.add_argument("--minutes-adapt", type=float, default=None, help="optional cap on adapt and finetune")
    parser.add_argument("--lr-scratch", type=float, default=2e-3)
    parser.add_argument("--lr-adapt", type=float, default=2e-3, help="also for finetune")
    parser.add_argument("--train-primary", action=argparse.BooleanOptionalAction, default=True,
                        help="adapt: train the pretrained weights with the quadratic terms")
    parser.add_argument("--eval-every", type=int, default=5, help="adapt and finetune")
    parser.add_argument("--eval-every-scratch", type=int, default=10)
    parser.add_argument("--threads", type=int, default=1, help="intra-op threads (0: PyTorch's default)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--progress", action=argparse.BooleanOptionalAction, default=False)
    parser.add_argument("--runs", type=Path, default=Path("runs") / f"adapt-vs-scratch-{int(time.time())}")
    parser.add_argument("--json", type=Path, default=RESULTS)
    parser.add_argument("--report-only", action="store_true", help="re-read the runs in --runs, train nothing")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    console = Console()
    if args.report_only:
        summaries = {mode: json.loads((args.runs / mode / "summary.json").read_text())
                     for mode in ("scratch", "adapt", "finetune")}
    else:
        summaries = {"scratch": run("scratch", args, args.epochs_scratch, args.minutes_scratch, args.lr_scratch,
                                    args.eval_every_scratch)}
        for mode in ("adapt", "finetune"):
            summaries[mode] = run(mode, args, args.epochs_adapt, args.minutes_adapt, args.lr_adapt, args.eval_every)
    target = summaries["scratch"]["best_val_acc"]
    scratch_at = first_reaching(args.runs / "scratch" / "metrics.jsonl", target)

    rows = []
    for mode, summary in summaries.items():
        reached = time_to_target(args.runs / mode / "metrics.jsonl", target, scratch_at)
        rows.append({
            "mode": mode, "final_val_acc": summary["final_val_acc"], "best_val_acc": summary["best_val_acc"],
            "steps": summary["steps"], "train_seconds": summary["train_seconds"],
            "wall_seconds": summary["wall_seconds"], "device_hours": summary["device_hours"],
            "trainable_params": summary["trainable_params"], "stop_reason": summary["stop_reason"], **reached,
        })

    table = Table(title=f"time to the scratch run's best val accuracy ({100 * target:.1f}%), "
                        f"{args.data} {args.image_size}px, {summaries['scratch']['device']}")
    for column in ("mode", "final val acc", "best val acc", "steps", "train s", "s to scratch best",
                   "% of scratch time", "steps to it", "% of scratch steps"):
        table.add_column(column, justify="right")
    percent = lambda value: "-" if value is None else f"{100 * value:.2f}%"  # noqa: E731
    for row in rows:
        reached = row["seconds_to_scratch_best"]
        table.add_row(row["mode"], f"{100 * row['final_val_acc']:.1f}%", f"{100 * row['best_val_acc']:.1f}%",
                      str(row["steps"]), f"{row['train_seconds']:.0f}",
                      "not reached" if reached is None else f"{reached:.1f}",
                      percent(row["fraction_of_scratch_time"]),
                      "-" if reached is None else str(row["steps_to_scratch_best"]),
                      percent(row["fraction_of_scratch_steps"]))
    print_table(console, table)  # whole numbers in a log too
    adapt = rows[1]["fraction_of_scratch_time"]
    verdict = ("adapt did not reach it (or scratch was at its best from step 0)" if adapt is None else
               f"adapt needed {100 * adapt:.2f}% of scratch's training time and "
               f"{100 * rows[1]['fraction_of_scratch_steps']:.2f}% of its steps (bar <= 10%, aim < 2%)")
    console.print(verdict)

    write_report(args.json, args, console, {"device": summaries["scratch"]["device"], "threads": args.threads},
                 benchmark="adapt_vs_scratch", data=args.data, model=summaries["scratch"]["model"],
                 scratch_best_val_acc=target, adapt_over_scratch_time=adapt, rows=rows)


if __name__ == "__main__":
    exit_on_user_error(main)
