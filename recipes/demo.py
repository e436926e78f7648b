"""`make demo`: joint SC + CE against the supervised-only baseline, same budget, on Fashion-MNIST, offline.

Fashion-MNIST stands in for CIFAR-10 on machines without it. Data comes from the HF hub when it is reachable,
otherwise from Debian's `dataset-fashion-mnist` package (installed when running as root on Debian), otherwise
the demo stops and says what to do. Both arms run `recipes/cifar10_joint.py` (one with `--mode supervised`) on
the paper's MNIST net with the same labelled batches, steps, lr schedule and augmentation, so the only difference
is the SC term. Nothing is cached: the numbers printed are measured by this run.

Both arms evaluate on the test split every ``--eval-every-steps`` steps; the demo ends with one figure (each arm's
test accuracy against steps, the SC loss beside it) and a linear probe of the frozen SC-layer features of both
runs and of the same net at random init (``sclearn.probe``), so the table shows what SC does to the features as
well as to the classifier.

    python recipes/demo.py [--steps 600] [--labels-per-class 40] [--eval-every-steps 100] [--output-dir runs/demo]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

from sclearn.export import PROBE_FILE, export_run
from sclearn.plots import plot_comparison
from sclearn.probe import probe_checkpoint

DEBIAN_DIR = Path("/usr/share/datasets/fashion-mnist")
HUB_ID = "zalando-datasets/fashion_mnist"
ROOT = Path(__file__).resolve().parents[1]

# The SC settings of the joint arm: the `tuned` preset (cosine, T 0.1, 3x3 mean-pooled patches on the 7x7 map,
# lambda 0.1 ramped up over the first 20% of the steps); benchmarks/RESULTS.md ("SC ablation") says how it was
# chosen. It is also cifar10_joint.py's default; the flag makes the choice visible here.
JOINT_FLAGS = ["--preset", "tuned"]


def hub_reachable(timeout: float = 3.0) -> bool:
    if os.environ.get("HF_DATASETS_OFFLINE") == "1" or os.environ.get("HF_HUB_OFFLINE") == "1":
        return False
    try:
        socket.create_connection(("huggingface.co", 443), timeout=timeout).close()
        return True
    except OSError:
        return False


def debian_files_present() -> bool:
    return DEBIAN_DIR.is_dir() and any(DEBIAN_DIR.glob("train-images*"))


def install_debian_package() -> bool:
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        return False
    print("installing Debian package dataset-fashion-mnist ...", flush=True)
    quiet = dict(stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    subprocess.run(["apt-get", "update", "-qq"], check=False, **quiet)
    done = subprocess.run(["apt-get", "install", "-y", "-qq", "dataset-fashion-mnist"], check=False, **quiet)
    return done.returncode == 0 and debian_files_present()


def find_data() -> str:
    """A data source for Fashion-MNIST: the Debian IDX files, else the hub, else install the package."""
    if debian_files_present():
        return f"idx:{DEBIAN_DIR}"
    if hub_reachable():
        return HUB_ID
    if install_debian_package():
        return f"idx:{DEBIAN_DIR}"
    sys.exit(
        "make demo needs Fashion-MNIST and found none:\n"
        f"  - the HF hub ({HUB_ID}) is not reachable;\n"
        f"  - {DEBIAN_DIR} does not exist, and the Debian package could not be installed here.\n"
        "Fix: `sudo apt-get install dataset-fashion-mnist` (Debian/Ubuntu), or download the four IDX .gz files\n"
        "(train/t10k images/labels) into a folder and run: python recipes/demo.py --data idx:<folder>"
    )


def run_arm(name: str, data: str, args: argparse.Namespace, extra: list[str]) -> dict:
    out = Path(args.output_dir) / name
    cmd = [
        sys.executable, str(ROOT / "recipes" / "cifar10_joint.py"),
        "--data", data, "--protocol", "none", "--labels-per-class", str(args.labels_per_class),
        "--backbone", "sc_mnist", "--layers", "stages.1", "--channels", "1", "--image-size", "28", "--no-hflip",
        "--batch-size", "64", "--unlabeled-ratio", "2", "--lr", "0.05", "--schedule", "cosine",
        "--epochs", "1000", "--max-steps", str(args.steps), "--seed", str(args.seed), "--split-seed", str(args.seed),
        "--checkpoint-every", "none", "--eval-every", "1000", "--eval-every-steps", str(args.eval_every_steps),
        "--report-to", "none", "--output-dir", str(out), "--overwrite", *extra,
    ]
    print(f"\n== {name}: {' '.join(cmd[1:])}", flush=True)
    done = subprocess.run(cmd, check=False, cwd=ROOT)
    if done.returncode != 0:  # the recipe has printed its one-line error; no traceback of this script on top
        print(f"error: the {name} arm stopped (exit status {done.returncode}); its message is above", file=sys.stderr)
        raise SystemExit(done.returncode)
    return json.loads((out / "summary.json").read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--data", help="data source; default: Debian's Fashion-MNIST, else the HF hub")
    parser.add_argument("--steps", type=int, default=600, help="optimizer steps per arm")
    parser.add_argument("--labels-per-class", type=int, default=40, help="labelled images per class")
    parser.add_argument("--seed", type=int, default=0, help="seed of the label subset and the model")
    parser.add_argument("--eval-every-steps", type=int, default=100, help="test accuracy every N steps (the curves)")
    parser.add_argument("--output-dir", default="runs/demo", help="where both runs go")
    args = parser.parse_args()
    data = args.data or find_data()
    print(f"data: {data}", flush=True)

    joint = run_arm("joint", data, args, ["--mode", "joint", *JOINT_FLAGS])
    sup = run_arm("supervised", data, args, ["--mode", "supervised"])
    probes = probe_both(joint, sup)
    figure = plot_comparison({"joint SC + CE": joint["output_dir"], "supervised only": sup["output_dir"]},
                             Path(args.output_dir) / "comparison.png",
                             title=f"Fashion-MNIST, {args.labels_per_class} labels per class, seed {args.seed}")
    a, b = joint["final_test_acc"], sup["final_test_acc"]
    rows = [("joint SC + CE", a, joint), ("supervised only", b, sup)]
    print(f"\nFashion-MNIST, {args.labels_per_class} labels per class, {args.steps} steps each, seed {args.seed}")
    print(f"{'arm':<18}{'test acc':>10}{'wall s':>9}  run dir")
    for name, acc, run in rows:
        print(f"{name:<18}{100 * acc:>9.2f}%{run['wall_time_s']:>9.0f}  {run['output_dir']}")
    print(f"{'difference':<18}{100 * (a - b):>+9.2f} points (one seed: see benchmarks/RESULTS.md for the spread)")
    j, s = probes["joint"], probes["supervised"]
    print(f"\nProbes of the frozen {j['layer']} features (the SC layer, average-pooled to {j['feature_dim']} numbers "
          f"per image): linear = logistic regression,\nkNN = 20-nearest-neighbour vote; both fitted on the "
          f"{j['num_train']} labelled images and scored on the {j['num_test']} test images")
    print(f"{'features of':<34}{'linear':>8}{'kNN':>8}")
    for name, lin, knn in [("the same net at random init", j["random_linear_top1"], j["random_knn_top1"]),
                           ("the supervised-only run", s["linear_top1"], s["knn_top1"]),
                           ("the joint SC + CE run", j["linear_top1"], j["knn_top1"])]:
        print(f"{name:<34}{100 * lin:>7.2f}%{100 * knn:>7.2f}%")
    print(f"{'joint - supervised':<34}{100 * (j['linear_top1'] - s['linear_top1']):>+7.2f} points (what SC adds "
          "to the labels, at this layer)")
    print(f"\nfigure: {figure}")
    print("hub folders (timm local-dir:, model cards): " + ", ".join(str(Path(r["output_dir"]) / "export")
                                                                   for r in (joint, sup)))


def probe_both(joint: dict, sup: dict) -> dict[str, dict]:
    """Linear and kNN probes of both runs' SC-layer features (the joint run's also at random init, the floor).

    Each result goes to the run's probe.json, and the run's hub folder is rewritten so its card shows it.
    """
    print("\n== probes: linear and kNN on frozen SC-layer features", flush=True)
    results = {}
    for name, summary, baseline in (("joint", joint, True), ("supervised", sup, False)):
        run = Path(summary["output_dir"])
        results[name] = probe_checkpoint(run, layer="stages.1", random_baseline=baseline)
        (run / PROBE_FILE).write_text(json.dumps(results[name], indent=2) + "\n")
        export_run(run)
    return results


if __name__ == "__main__":
    main()
