"""The whole pipeline's timings: the default demo through the local stack.

    python -m bench.pipeline [--population 12] [--period 5] [--deadline 20]

Reports, per kind of user, the time from the deadline to the SMS and from
the send to DELIVERED, p50 and p99. The scheduler period is the expected
floor of deadline → SMS: a message is revoked at the first sweep after its
deadline and texted at the first fallback sweep after that.
"""

import argparse
import io

from bench.common import RESULTS, percentiles, table
from local import demo
from local.stack import Stack


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.pipeline", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--population", type=int, default=12)
    parser.add_argument("--period", type=float, default=5.0)
    parser.add_argument("--deadline", type=int, default=20)
    args = parser.parse_args(argv)
    with Stack(RESULTS / "logs" / "pipeline", period=args.period) as stack:
        planned = demo.plan(args.population)
        demo.launch(stack, planned, args.deadline)
        docs = demo.watch(stack, planned, timeout=args.deadline * 6, out=io.StringIO())
        found = demo.problems(stack, planned, docs)
    rows = []
    for kind in demo.KINDS:
        times = [demo.timings(docs[p.message_id]) for p in planned if p.kind == kind and docs[p.message_id]]
        for measure in ("deadline→SMS", "send→SMS", "send→delivered"):
            values = [t[measure] for t in times if t[measure] is not None]
            if values:
                rows.append([kind, measure, *percentiles(values)])
    table(
        f"Timings through the whole stack, scheduler period {args.period} s, deadline {args.deadline} s",
        ["kind", "measure", "n", "p50 s", "p99 s"],
        rows,
    )
    print("fates: all met" if not found else "PROBLEMS:\n" + "\n".join(found))
    return 0 if not found else 1


if __name__ == "__main__":
    raise SystemExit(main())
