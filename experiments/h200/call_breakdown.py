"""One traced speculative call's kernels by part and kind, from a saved trace and the loop's
dumped HLO (both kept in docs/benchmarks/h200_qwen_s17/trace/ for the 12-node tree call).

    python experiments/h200/call_breakdown.py --trace=T.trace.json.gz --hlo=H.txt.gz --calls=127

--calls: the traced loop's iterations (the profile JSON's `iterations`). Prints the middle
call's (part, kind, kernels, µs) table (`profile.call_breakdown`; kinds by `kernel_kind`).
"""

from __future__ import annotations

import argparse
import gzip

from specjax.bench import kernels, profile, trace
from specjax.decoding.speculative import PHASES


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--trace", required=True, help="a *.trace.json.gz of the loop")
    parser.add_argument("--hlo", required=True, help="the loop's after-optimizations HLO")
    parser.add_argument("--calls", type=int, required=True, help="iterations of the loop")
    args = parser.parse_args()
    opener = gzip.open if args.hlo.endswith(".gz") else open
    with opener(args.hlo, "rt") as file:
        hlo = file.read()
    events = trace.device_events(trace.load_events(args.trace))
    call = kernels.phase_timeline(hlo, events, PHASES, calls=args.calls)["one_call"]
    print("| part | kind | kernels | µs |\n|---|---|---|---|")
    for part, kind, n, us in profile.call_breakdown(call):
        print(f"| {part} | {kind} | {n} | {us:.1f} |")


if __name__ == "__main__":
    main()
