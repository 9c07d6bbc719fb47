"""One traced speculative call's kernels by part and kind, from a saved trace and the loop's
dumped HLO (both kept in docs/benchmarks/h200_qwen_s17/trace/ for the 12-node tree call).

    python experiments/h200/call_breakdown.py --trace=T.trace.json.gz --hlo=H.txt.gz --calls=127

--calls: the traced loop's iterations (the profile JSON's `iterations`). Prints the middle
call's (part, kind, kernels, µs) table (`profile.call_breakdown`; kinds by `kernel_kind`).
--events also lists that call's kernels in order: part, µs, trace name, and the HLO
instruction's shape and op_name where the trace name matches one (custom kernels and copies
have none).
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
    parser.add_argument("--events", action="store_true", help="also list the call's kernels")
    args = parser.parse_args()
    opener = gzip.open if args.hlo.endswith(".gz") else open
    with opener(args.hlo, "rt") as file:
        hlo = file.read()
    events = trace.device_events(trace.load_events(args.trace))
    call = kernels.phase_timeline(hlo, events, PHASES, calls=args.calls)["one_call"]
    print("| part | kind | kernels | µs |\n|---|---|---|---|")
    for part, kind, n, us in profile.call_breakdown(call):
        print(f"| {part} | {kind} | {n} | {us:.1f} |")
    if args.events:
        print("\n| part | µs | kernel | HLO shape | op_name |\n|---|---|---|---|---|")
        for part, name, _, us in call:
            shape, op = instructions(hlo).get(name, ("", ""))
            print(f"| {part} | {us:.1f} | {name} | {shape} | {op} |")


def instructions(hlo: str) -> dict[str, tuple[str, str]]:
    """HLO instructions by their kernel's trace name (`kernels.kernel_name`): (result shape,
    op_name within the loop body)."""
    _, blocks = kernels.parse(hlo)
    return {
        kernels.kernel_name(inst.name): (
            inst.line.split(" = ", 1)[1].split(" ", 1)[0],
            inst.op_name.rpartition("/body/")[2],
        )
        for block in blocks.values()
        for inst in block
    }


if __name__ == "__main__":
    main()
