"""The table and the markdown report of ``alma-bench perf`` (reports/perf.md)."""

from __future__ import annotations

from pathlib import Path

from alma_bench.perf.intervals import format_ratio


def _f(v, fmt="{:.3g}") -> str:
    return "-" if v is None else fmt.format(v)


def _s(st, fmt="{:.3g}") -> str:
    """median (min - max) of a stats dict."""
    if not st:
        return "-"
    return f"{_f(st['median'], fmt)} ({_f(st['min'], fmt)} - {_f(st['max'], fmt)})"


def format_table(r: dict) -> str:
    """The result as a markdown table: one measurement per row, median (min - max)."""
    m = r["machine"]
    rows = [("machine", f"{m['cpu']}, {m['cores']} cores, torch {m['torch']}, {m['device']}, "
                        f"{m['threads']} threads, OMP_WAIT_POLICY {m['omp_wait_policy']}"),
            ("load average before / after", f"{r['load_before']} / {r['load_after']}")]
    for name in ("contiguous", "channels_last"):
        rows.append((f"bare loop img/s, {name}", _s(r["bare"][name], "{:.0f}")))
    for name, st in (r.get("compiled") or {}).items():
        rows.append((f"bare loop, torch.compile, {name}: img/s; compile s",
                     f"{_s(st['images_per_s'], '{:.0f}')}; {_s(st['compile_s'])}"))
    rows.append(("limit (faster layout) img/s",
                 f"{_f(r['bare_images_per_s'], '{:.0f}')} ({r['bare']['limit_layout']})"))
    for name in ("contiguous", "channels_last"):
        h = r["harness"][name]
        rows.append((f"harness dense img/s, {name}", _s(h["images_per_s"], "{:.0f}")))
        rows.append((f"harness/limit time per sample, {name}", _s(h["vs_limit"])))
        rows.append((f"harness/bare same layout, {name}", _s(h["vs_bare_same_layout"])))
    lay = r["harness_layout"]
    rows.append((f"whole megabatches (+eval, metrics, ckpt)/limit, {lay}",
                 _s(r["harness"][lay]["whole_vs_limit"])))
    for name in ("contiguous", "channels_last"):
        rows.append((f"sparse (APP final density)/dense step time, {name}",
                     _s(r["sparse"][name]["final_step_ratio"])))
    for kind, st in (r.get("strategies") or {}).items():
        rows.append((f"{kind}/dense time per training sample, contiguous",
                     format_ratio(st["per_sample_vs_dense"]) if "ci" in st["per_sample_vs_dense"]
                     else _s(st["per_sample_vs_dense"])))
    sh = r["shares"]
    rows += [("test-set pass s / share of a megabatch",
              f"{_s(sh['test_pass_s'])} / {_s(sh['test_pass_of_megabatch'], '{:.1%}')}"),
             ("evaluation img/s at batch 128 / 256 / 1024",
              " / ".join(_s(sh["eval_images_per_s"].get(b), "{:.0f}") for b in (128, 256, 1024))),
             ("all evaluation + bookkeeping share of a megabatch",
              _s(sh["eval_and_bookkeeping_of_megabatch"], "{:.1%}")),
             ("SNIP pruning s / share of a megabatch",
              f"{_s(sh['prune_s'])} / {_s(sh['prune_of_megabatch'], '{:.1%}')}")]
    d = r["data"]
    rows += [(f"data ({d['stream']}): first decode s", _f(r["first_decode_s"])),
             ("data: cached start s", _s(d.get("cached_start"))),
             ("augmentation (gather+crop+flip+normalise) img/s",
              _f(d["augment_images_per_s"], "{:.0f}")),
             ("import torch + avalanche + harness s", _f(r["import_s"])),
             ("first harness run (start-up) s", _f(r["harness_first_run_s"]))]
    p = r["parallel"]
    rows.append(("quickstart 1 / 2 workers s, speedup",
                 f"{_f(p.get('workers_1_s'))} / {_f(p.get('workers_2_s'))}, "
                 f"{_f(p['workers_speedup'])}"))
    for t in r["threads"] or []:
        rows.append((f"bare img/s, {t['threads']} thread(s), wait {t['omp_wait_policy']}, "
                     f"{'beside a busy process' if t['other_process_busy'] else 'alone'}",
                     _f(t["images_per_s"], "{:.0f}")))
    inter = r.get("interleaved")
    if inter:
        rows.append(("interleaved rounds; stopped because; seconds",
                     f"{inter['rounds']}; {inter['stopped']}; {inter['seconds']:.0f} "
                     f"(precision +-{inter['precision']:.0%}, every ratio precise: "
                     f"{'yes' if inter['precise'] else 'NO'})"))
        for name, st in inter["ratios"].items():
            rows.append((f"interleaved {name.replace('_', ' ')}", format_ratio(st)))
    for key, t in r["targets"].items():
        verdict = ("skipped: " + r["skipped"].get(key, "?") if t["met"] is None else
                   "met" if t["met"] else f"MISSED by {t['missed_by']:.1%}")
        if "ci" in t:
            verdict += (" (interval: " + ("met" if t["met_by_interval"] else "missed" if
                                         t["missed_by_interval"] else "undecided") + ")")
        rows.append((f"target {key} {t['target']}", f"{_f(t['value'])}: {verdict}"))
    from alma_bench.perf.runs import format_rows

    for e2e in (r.get("end_to_end") or {}).values():
        rows += format_rows(e2e)
    return _table(rows)


def _table(rows: list[tuple[str, str]]) -> str:
    w = max(len(a) for a, _ in rows)
    lines = [f"| {'measurement'.ljust(w)} | value |", f"|{'-' * (w + 2)}|-------|"]
    return "\n".join([*lines, *(f"| {a.ljust(w)} | {b} |" for a, b in rows)])


NOTES = ("<!-- notes: kept when the report is regenerated -->", "<!-- end notes -->")


def write_report(path: Path, r: dict, table: str) -> None:
    """reports/perf.md: the command, date, machine and the latest table. A hand-written
    section between the NOTES markers (analysis of the numbers) survives regeneration."""
    c = r["config"]
    old = path.read_text() if path.is_file() else ""
    notes = (old[old.index(NOTES[0]):old.index(NOTES[1]) + len(NOTES[1])] + "\n"
             if NOTES[0] in old and NOTES[1] in old else f"{NOTES[0]}\n{NOTES[1]}\n")
    text = f"""# alma-bench perf

Made by `{r['command']}` on {r['date']}.
Machine: {r['machine']['cpu']}, {r['machine']['cores']} cores, torch {r['machine']['torch']},
device {r['machine']['device']}, {r['machine']['threads']} torch threads; load average
{r['load_before']} before, {r['load_after']} after.
Workload: {c['model']} on {c['stream']['name']}, megabatch training sets {c['sets']},
batch {c['protocol']['batch_size']}, {c['protocol']['epochs']} epoch(s) per megabatch,
crop+flip augmentation, {c['repeats']} interleaved repeats; median (min - max).

{table}

How to read it: the rows "interleaved ..." are the ratios to quote: each is the median of
per-round ratios of blocks of steps of the two loops run alternately in this process, with
its distribution-free 95% interval, its half-width and the number of blocks (docs/perf.md);
the target rows say whether the whole interval is on one side of the target. The other
ratios are the one-shot repeats' median (min - max). "harness/limit" is the harness's time
per training sample (its batch loops: data loader, Avalanche template, every plugin hook,
mask ops) over the bare loop's in its faster layout; "whole megabatches" adds per-epoch
validation, the test/train/validation passes, metrics and the checkpoint. The one-shot
sparse/dense compares the step time of the last megabatch, where APP's masks are at their
final density. The JSON (`--json FILE`) holds every repeat's summary and every block.

{notes}"""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
