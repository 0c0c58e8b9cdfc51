"""The ``show``, ``compare`` and ``report`` commands (alma_bench/cli.py parses their options).

Heavy imports (pandas, matplotlib) happen inside the commands, so importing this module is
cheap; ``show`` and ``compare`` import no torch.
"""

from __future__ import annotations


def cmd_show(args) -> int:
    from alma_bench.analysis import tables
    from alma_bench.analysis.results import load, summary_table

    res = load(args.results)
    runs = res.runs
    ids = getattr(args, "run_ids", None)
    if ids is not None:
        runs = runs[runs["run_id"].isin(ids)]
    metrics = tables.check_metrics(runs, getattr(args, "metrics", None), tables.DEFAULT_METRICS)
    # groups are labelled for the rows shown: after a run, only this invocation's config
    table = tables.in_order(summary_table(runs, metrics), getattr(args, "labels", None))
    text = tables.render(table, metrics, getattr(args, "format", "table"))
    print(text, end="" if text.endswith("\n") else "\n")
    return 0


def cmd_compare(args) -> int:
    from alma_bench.analysis import compare, tables
    from alma_bench.analysis.results import load

    runs = load(args.results).runs
    metrics = tables.check_metrics(runs, args.metrics, compare.DEFAULT_METRICS)
    text = compare.render(compare.paired(runs, args.baseline, metrics),
                          getattr(args, "format", "text"))
    print(text, end="" if text.endswith("\n") else "\n")
    return 0


def cmd_report(args) -> int:
    from alma_bench.analysis.report import make_report

    folders = [args.results] if isinstance(args.results, str) else list(args.results)
    cmd = args.command or ("alma-bench report " + " ".join(folders)
                           + (f" --out {args.out}" if args.out else "")
                           + (f" --format {args.format}" if args.format != "png" else ""))
    path = make_report(folders if len(folders) > 1 else folders[0], args.out, command=cmd,
                       formats=args.format)
    print(f"report written to {path}")
    return 0
