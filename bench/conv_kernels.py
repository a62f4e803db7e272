"""oneDNN against PyTorch's im2col kernel for the first layer of vision models, on the CPU.

    python -m bench.conv_kernels [--repeats 5]

Times a forward pass and input gradient of a 9x9 convolution to 64 channels for few input channels, the
measurement behind ``mei.preparation.IM2COL_MAX_INPUT_CHANNELS``. Both kernels run side by side on the same
input; the figure is the median of ``--repeats`` measurements of three calls each. Results in
``bench/results/conv_kernels_cpu.json``.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
from pathlib import Path

import torch
import torch.nn.functional as F

from bench.timing import timed

RESULTS = Path(__file__).parent / "results"
# (input channels, height, width): mouse (1 or 2 channels, 4 with behaviour channels), monkey V4, a control.
CASES = [(1, 36, 64), (2, 36, 64), (4, 36, 64), (4, 68, 135), (1, 100, 100), (8, 36, 64)]
BATCHES = [1, 8, 32]
CALLS = 3


def per_call_ms(convolve, x: torch.Tensor, repeats: int) -> list[float]:
    gradient = torch.ones_like(convolve(x))

    def run() -> None:
        for _ in range(CALLS):
            torch.autograd.grad(convolve(x), x, gradient)

    run()  # warm-up
    return [1000 * timed(run, "cpu") / CALLS for _ in range(repeats)]


def measure(repeats: int) -> list[dict]:
    rows = []
    for channels, height, width in CASES:
        weight = torch.randn(64, channels, 9, 9)
        kernels = {
            "onednn": lambda x, weight=weight: F.conv2d(x, weight),
            "im2col": lambda x, weight=weight: torch.ops.aten.thnn_conv2d(x, weight, (9, 9), None, (1, 1), (0, 0)),
        }
        for batch in BATCHES:
            x = torch.randn(batch, channels, height, width, requires_grad=True)
            times = {name: statistics.median(per_call_ms(kernel, x, repeats)) for name, kernel in kernels.items()}
            rows.append({"input": [channels, height, width], "batch": batch, "ms": times,
                         "onednn_over_im2col": times["onednn"] / times["im2col"]})  # fmt: skip
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", type=Path, default=RESULTS / "conv_kernels_cpu.json")
    args = parser.parse_args()
    rows = measure(args.repeats)
    report = {
        "benchmark": "forward pass and input gradient of a 9x9 convolution to 64 channels, ms per call",
        "host": f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} torch threads",
        "torch": torch.__version__,
        "results": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    for row in rows:
        channels, height, width = row["input"]
        print(
            f"{channels} x {height}x{width} batch {row['batch']:3d}: oneDNN {row['ms']['onednn']:8.2f} ms  "
            f"im2col {row['ms']['im2col']:8.2f} ms  ratio {row['onednn_over_im2col']:5.2f}"
        )
    print(f"written to {args.out}")


if __name__ == "__main__":
    main()
