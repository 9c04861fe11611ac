"""The run's report: figures, ratios to the baselines, a JSON file, a
Markdown summary, plots (matplotlib, Agg) and the table printed at the end.

Every payment that arrived is counted once: finished (`payments_completed`),
shed (`payments_shed`: refused for overload, of which `shed_at_create`
were never started and `shed_later` stopped part way, their work wasted;
`shed_rate_limited` of them were 429s), timed out (`payments_timed_out`:
the client gave up) or failed (`payments_failed`: anything else). Shed
payments are the system saying no on purpose: they are no violation and do
not change the exit status."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from bench.histograms import OPERATIONS, Merged, cdf_points_ms, summary_ms

REPORT_JSON = "report.json"
REPORT_MARKDOWN = "report.md"
# The figure the console shows for each baseline: its key, and its unit.
BASELINE_FIGURES = {
    "ingest": ("rows_per_s", " rows/s"),
    "actor": ("round_trips_per_s", " round trips/s"),
    "bridge": ("bridged_cpu_us_per_call", " us CPU a bridged call"),
    "http": ("requests_per_s", " requests/s"),
}
PLOTS = {
    "throughput": "throughput.png",
    "latency_over_time": "latency_over_time.png",
    "latency_cdf": "latency_cdf.png",
}


def _ratio(numerator: float | None, denominator: float | None) -> float | None:
    if not numerator or not denominator:
        return None
    return round(numerator / denominator, 4)


def build(
    *,
    settings: dict[str, Any],
    command: str,
    machine: dict[str, Any],
    merged: Merged,
    processes: list[dict[str, Any]],
    nodes_total: dict[str, Any] | None = None,
    engine_counters: dict[str, float] | None,
    journal: dict[str, Any],
    cost: dict[str, float],
    invariants: dict[str, Any],
    baselines: dict[str, Any],
) -> dict[str, Any]:
    duration_s = float(settings["duration_s"])
    measured_s = max(duration_s, merged.last_completed_s)
    end_to_end = summary_ms(merged.histograms["e2e"])
    achieved = merged.completed / measured_s if measured_s else 0.0
    completed_in_window = sum(row["completed"] for second, row in merged.per_second.items() if second < duration_s)
    payments = max(1, merged.arrived)
    outcomes = merged.outcomes
    # Per payment that was let in (a payment refused at create wrote
    # nothing), and per payment finished (a refused one sent one request):
    # what one payment costs is the figure a baseline is divided by, however
    # much of the offered load was shed.
    rows_per_payment = journal["journal_rows"] / max(1, merged.arrived - outcomes["shed_at_create"])
    requests_per_payment = merged.finished_requests / merged.completed if merged.completed else merged.requests / payments
    figures: dict[str, Any] = {
        "mode": settings["mode"],
        # Http mode: the node processes serving the load (None in engine mode).
        "nodes": settings.get("nodes"),
        "rate_requested_per_s": settings["rate_per_s"],
        "offered_payments_per_s": round(merged.arrived / duration_s, 1),
        "achieved_payments_per_s": round(achieved, 1),
        "achieved_in_window_per_s": round(completed_in_window / duration_s, 1),
        "duration_s": duration_s,
        "measured_s": round(measured_s, 2),
        "payments_arrived": merged.arrived,
        "payments_completed": merged.completed,
        "payments_shed": outcomes["shed"],
        "payments_timed_out": outcomes["timed_out"],
        "payments_failed": outcomes["failed"],
        "shed_at_create": outcomes["shed_at_create"],
        "shed_later": outcomes["shed"] - outcomes["shed_at_create"],
        "shed_rate_limited": outcomes["shed_rate_limited"],
        "shed_payments_per_s": round(outcomes["shed"] / duration_s, 1),
        "p50_ms": end_to_end["p50_ms"],
        "p90_ms": end_to_end["p90_ms"],
        "p99_ms": end_to_end["p99_ms"],
        "p999_ms": end_to_end["p999_ms"],
        "max_ms": end_to_end["max_ms"],
        "operations": {name: summary_ms(histogram) for name, histogram in merged.histograms.items()},
        "scenarios": {
            name: {"arrived": merged.scenarios.get(name, 0), **summary_ms(histogram)}
            for name, histogram in sorted(merged.scenario_histograms.items())
        },
        "errors": dict(sorted(merged.errors.items(), key=lambda item: -item[1])),
        # The count each kind of error went to: shed, timed_out or failed.
        "error_outcomes": dict(sorted(merged.error_outcomes.items())),
        "requests_total": merged.requests,
        "requests_per_payment": round(requests_per_payment, 3),
        "requests_per_arrival": round(merged.requests / payments, 3),
        "journal": {
            **journal,
            "rows_per_payment": round(rows_per_payment, 3),
            "rows_per_commit": round(journal["journal_rows"] / journal["journal_commits"], 2) if journal["journal_commits"] else 0.0,
            "rows_per_s": round(journal["journal_rows"] / measured_s, 1),
            "commits_per_s": round(journal["journal_commits"] / measured_s, 1),
            "transactions_per_s": round(journal["journal_transactions"] / measured_s, 1),
            "rows_per_transaction": round(journal["journal_rows"] / journal["journal_transactions"], 2) if journal["journal_transactions"] else 0.0,
        },
        "processes": processes,
        **({"nodes_total": nodes_total} if nodes_total is not None else {}),
        "machine_cost": cost,
        "cpu_ms_per_payment": _cpu_per_payment(cost, processes, merged.completed),
        "invariants": invariants,
        "invariants_ok": bool(invariants["ok"]),
    }
    if engine_counters is not None:
        figures["actor"] = engine_counters
        figures["commits_per_s"] = engine_counters["commits_per_s"]
        figures["mean_batch_commands"] = engine_counters["mean_batch_commands"]
    else:
        figures["commits_per_s"] = figures["journal"]["commits_per_s"]
        figures["mean_batch_commands"] = None
    figures["baselines"] = _baselines_with_equivalents(baselines, rows_per_payment, requests_per_payment, figures, settings)
    figures["ratios"] = _ratios(figures)
    figures["time_series"] = [
        {
            "second": second,
            "offered_per_s": row["arrived"],
            "achieved_per_s": row["completed"],
            "shed_per_s": row["shed"],
            "timed_out_per_s": row["timed_out"],
            "failed_per_s": row["failed"],
            **{key: value for key, value in summary_ms(row["e2e"]).items() if key != "count"},
        }
        for second, row in sorted(merged.per_second.items())
    ]
    figures["cdf_ms"] = {name: cdf_points_ms(histogram) for name, histogram in merged.histograms.items() if histogram.get_total_count()}
    return {"command": command, "machine": machine, "settings": settings, **figures}


def _baselines_with_equivalents(
    baselines: dict[str, Any], rows_per_payment: float, requests_per_payment: float, figures: dict[str, Any], settings: dict[str, Any]
) -> dict[str, Any]:
    result = {name: dict(value) for name, value in baselines.items()}
    ingest = result.get("ingest")
    if ingest and "rows_per_s" in ingest and rows_per_payment:
        ingest["payments_per_s_equivalent"] = round(ingest["rows_per_s"] / rows_per_payment, 1)
    actor = result.get("actor")
    if actor and "round_trips_per_s" in actor:
        commands_per_payment = (figures.get("actor") or {}).get("commands_per_payment")
        node_processes = settings["processes"]
        actor["node_processes"] = node_processes
        if commands_per_payment:
            actor["commands_per_payment"] = commands_per_payment
            actor["payments_per_s_equivalent"] = round(actor["round_trips_per_s"] * node_processes / commands_per_payment, 1)
    http = result.get("http")
    if http and "requests_per_s" in http and requests_per_payment:
        http["requests_per_payment"] = round(requests_per_payment, 3)
        http["payments_per_s_equivalent"] = round(http["requests_per_s"] / requests_per_payment, 1)
    return result


def _ratios(figures: dict[str, Any]) -> dict[str, Any]:
    """Each headline figure over its baseline. Throughputs: achieved over
    the baseline's payments-per-second equivalent (1.0 = as fast as the
    layer underneath allows). Latencies: over the baseline's own latency
    for one step (a payment needs several steps in sequence)."""
    baselines = figures["baselines"]
    ratios: dict[str, Any] = {}
    achieved = figures["achieved_payments_per_s"]
    throughput = {}
    for name in ("ingest", "actor", "http"):
        equivalent = (baselines.get(name) or {}).get("payments_per_s_equivalent")
        if equivalent:
            throughput[f"vs_{name}"] = _ratio(achieved, equivalent)
    ratios["achieved_payments_per_s"] = throughput
    ratios["offered_payments_per_s"] = {"achieved_over_offered": _ratio(achieved, figures["offered_payments_per_s"])}
    steps = {
        "ingest": (baselines.get("ingest") or {}).get("commit_p50_ms"),
        "actor": (baselines.get("actor") or {}).get("round_trip_p50_ms"),
        "http": (baselines.get("http") or {}).get("request_p50_ms"),
    }
    for figure in ("p50_ms", "p99_ms", "p999_ms"):
        ratios[figure] = {f"vs_{name}_p50": _ratio(figures[figure], value) for name, value in steps.items() if value}
    journal = figures["journal"]
    ingest = baselines.get("ingest") or {}
    if ingest.get("rows_per_s"):
        ratios["journal_rows_per_s"] = {"vs_ingest": _ratio(journal["rows_per_s"], ingest["rows_per_s"])}
    return ratios


# ----------------------------------------------------------------- output


def write(report: dict[str, Any], directory: Path) -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    paths = [directory / REPORT_JSON]
    paths[0].write_text(json.dumps(report, indent=2, sort_keys=False) + "\n")
    paths += plot(report, directory)
    markdown = directory / REPORT_MARKDOWN
    markdown.write_text(to_markdown(report))
    paths.append(markdown)
    return paths


def plot(report: dict[str, Any], directory: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot

    series = report["time_series"]
    seconds = [row["second"] for row in series]
    title = f"{report['mode']} mode, {report['rate_requested_per_s']:g}/s offered for {report['duration_s']:g} s"
    paths = []

    figure, axes = pyplot.subplots(figsize=(9, 4.5))
    lines = (
        ("offered_per_s", "offered (arrivals/s)", "tab:blue"),
        ("achieved_per_s", "achieved (payments finished/s)", "tab:green"),
        ("shed_per_s", "shed (refused for overload/s)", "tab:orange"),
        ("timed_out_per_s", "timed out/s", "tab:purple"),
        ("failed_per_s", "failed/s", "tab:red"),
    )
    # Each second's count is a step from its start to the next second's:
    # the last step needs an end too.
    edges = seconds + [seconds[-1] + 1] if seconds else []
    for key, label, color in lines:
        # Offered, achieved and shed always; the others when there are any.
        if key not in ("timed_out_per_s", "failed_per_s") or any(row[key] for row in series):
            counts = [row[key] for row in series]
            axes.plot(edges, counts + counts[-1:], label=label, drawstyle="steps-post", color=color)
    axes.axvline(report["duration_s"], color="grey", linestyle=":", label="arrivals end")
    axes.set_xlabel("seconds since start")
    axes.set_ylabel("payments per second")
    axes.set_title(f"Throughput: {title}")
    axes.grid(True, alpha=0.3)
    axes.legend()
    paths.append(_save(figure, directory / PLOTS["throughput"], pyplot))

    figure, axes = pyplot.subplots(figsize=(9, 4.5))
    for key, label in (("p50_ms", "p50"), ("p90_ms", "p90"), ("p99_ms", "p99"), ("p999_ms", "p99.9"), ("max_ms", "max")):
        points = [(row["second"], row[key]) for row in series if row[key] > 0]
        if points:
            axes.plot([p[0] for p in points], [p[1] for p in points], label=label, drawstyle="steps-post")
    axes.set_yscale("log")
    axes.set_xlabel("seconds since start (by completion)")
    axes.set_ylabel("end-to-end latency (ms, log)")
    axes.set_title(f"Latency percentiles per second: {title}")
    axes.grid(True, which="both", alpha=0.3)
    axes.legend()
    paths.append(_save(figure, directory / PLOTS["latency_over_time"], pyplot))

    figure, axes = pyplot.subplots(figsize=(9, 4.5))
    for name in OPERATIONS:
        points = report["cdf_ms"].get(name)
        if points:
            axes.plot([p[0] for p in points], [p[1] for p in points], label="end to end" if name == "e2e" else name, linewidth=2.5 if name == "e2e" else 1.2)
    axes.set_xscale("log")
    axes.set_xlabel("latency (ms, log)")
    axes.set_ylabel("fraction at or below")
    axes.set_ylim(0, 1.01)
    axes.set_title(f"Latency CDF: {title}")
    axes.grid(True, which="both", alpha=0.3)
    axes.legend()
    paths.append(_save(figure, directory / PLOTS["latency_cdf"], pyplot))
    return paths


def _save(figure: Any, path: Path, pyplot: Any) -> Path:
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    pyplot.close(figure)
    return path


def _seconds(value: float | None) -> str:
    return "unknown (the server restarted)" if value is None else f"{value:.1f} s"


def _number(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:,.3f}".rstrip("0").rstrip(".") if abs(value) < 100 else f"{value:,.1f}"
    return f"{value:,}" if isinstance(value, int) else str(value)


def headline_rows(report: dict[str, Any]) -> list[tuple[str, str, str]]:
    ratios = report["ratios"]
    throughput = ", ".join(f"{name[3:]} {value:.3f}" for name, value in ratios["achieved_payments_per_s"].items() if value is not None)
    rows = [
        ("offered payments/s", _number(report["offered_payments_per_s"]), f"requested {_number(report['rate_requested_per_s'])}"),
        ("achieved payments/s", _number(report["achieved_payments_per_s"]), f"of baseline equivalent: {throughput or '-'}"),
        (
            "payments finished / shed / timed out / failed",
            " / ".join(f"{report[key]:,}" for key in ("payments_completed", "payments_shed", "payments_timed_out", "payments_failed")),
            f"of {report['payments_arrived']:,} arrived",
        ),
        (
            "shed at create / later",
            f"{report['shed_at_create']:,} / {report['shed_later']:,}",
            f"{_number(report['shed_payments_per_s'])}/s shed; 429 rate limit {report['shed_rate_limited']:,}",
        ),
    ]
    for key, label in (("p50_ms", "p50"), ("p99_ms", "p99"), ("p999_ms", "p99.9")):
        against = ", ".join(f"{name[3:-4]} x{value:,.1f}" for name, value in ratios[key].items() if value is not None)
        rows.append((f"end-to-end {label} (ms)", _number(report[key]), f"over one baseline step: {against or '-'}"))
    rows.append(("end-to-end max (ms)", _number(report["max_ms"]), ""))
    journal = report["journal"]
    rows.append(("commits/s", _number(report["commits_per_s"]), f"journal rows/commit {_number(journal['rows_per_commit'])} (a partition's turn)"))
    rows.append(("database transactions/s", _number(journal["transactions_per_s"]), f"journal rows/transaction {_number(journal['rows_per_transaction'])} (the group commit's writes)"))
    if report.get("mean_batch_commands") is not None:
        rows.append(("mean batch (commands/commit)", _number(report["mean_batch_commands"]), ""))
    for process in report["processes"]:
        rows.append((f"CPU {process['name']}", f"{process['cpu_s']:.1f} s", f"{process['cpu_fraction']:.0%} of a core, peak {process['peak_rss_mb']:.0f} MiB"))
    total = report.get("nodes_total")
    if total is not None:
        rows.append(
            (f"CPU {total['name']}", f"{total['cpu_s']:.1f} s", f"{total['cpu_fraction']:.0%} of a core over {total['nodes']} nodes, peaks summed {total['peak_rss_mb']:.0f} MiB")
        )
    per_payment = report.get("cpu_ms_per_payment")
    if per_payment:
        detail = ", ".join(f"{name} {value:.2f} ms" for name, value in per_payment.items() if name != "machine" and value is not None)
        rows.append(("CPU per finished payment", f"{per_payment['machine']:.2f} ms", detail))
    cost = report["machine_cost"]
    rows.append(
        ("machine busy", f"{cost['machine_busy_fraction']:.0%}", f"PostgreSQL CPU {_seconds(cost['postgres_cpu_s'])}, other processes {_seconds(cost.get('other_cpu_s'))}")
    )
    rows.append(("invariants I1-I6", "ok" if report["invariants_ok"] else "VIOLATED", report["invariants"].get("summary", "")))
    return rows


def _cpu_per_payment(cost: dict[str, Any], processes: list[dict[str, Any]], completed: int) -> dict[str, float | None]:
    """CPU (ms) the run cost per finished payment: the whole machine's, and
    PostgreSQL's and each of the bench's processes' part of it. A steadier
    yardstick for a change than throughput on a noisy machine: compare runs
    offered the same load. Refused payments cost CPU too and are in it."""
    if not completed:
        return {}
    per = {"machine": round(cost["machine_busy_cpu_s"] * 1000 / completed, 3)}
    postgres = cost.get("postgres_cpu_s")
    per["PostgreSQL"] = None if postgres is None else round(postgres * 1000 / completed, 3)
    for process in processes:
        per[process["name"]] = round(process["cpu_s"] * 1000 / completed, 3)
    return per


def heading(report: dict[str, Any]) -> str:
    nodes = report.get("nodes") or 1
    return f"payments bench: {report['mode']} mode" + (f", {nodes} nodes" if nodes > 1 else "")


def print_summary(report: dict[str, Any], console: Console) -> None:
    table = Table(title=heading(report), show_lines=False)
    table.add_column("figure")
    table.add_column("value", justify="right")
    table.add_column("note")
    for row in headline_rows(report):
        table.add_row(*row)
    console.print(table)
    operations = Table(title="latency by operation (ms)")
    for column in ("operation", "count", "p50", "p90", "p99", "p99.9", "max"):
        operations.add_column(column, justify="left" if column == "operation" else "right")
    for name, figures in report["operations"].items():
        if figures["count"]:
            operations.add_row(
                "end to end" if name == "e2e" else name,
                f"{figures['count']:,}",
                *(_number(figures[key]) for key in ("p50_ms", "p90_ms", "p99_ms", "p999_ms", "max_ms")),
            )
    console.print(operations)
    baselines = Table(title="baselines (same run)")
    baselines.add_column("baseline")
    baselines.add_column("figure", justify="right")
    baselines.add_column("payments/s equivalent", justify="right")
    for name, values in report["baselines"].items():
        key, unit = BASELINE_FIGURES.get(name, ("error", ""))
        figure = values.get(key, values.get("error", "-"))
        baselines.add_row(name, f"{_number(figure)}{unit}", _number(values.get("payments_per_s_equivalent")))
    console.print(baselines)
    if report["errors"]:
        errors = Table(title="errors by kind")
        errors.add_column("kind")
        errors.add_column("count", justify="right")
        errors.add_column("counted as")
        for kind, count in list(report["errors"].items())[:20]:
            errors.add_row(kind, f"{count:,}", _counted_as(report, kind))
        console.print(errors)


def _counted_as(report: dict[str, Any], kind: str) -> str:
    return report["error_outcomes"][kind].replace("_", " ")


def to_markdown(report: dict[str, Any]) -> str:
    machine = report["machine"]
    lines = [
        f"# {heading(report)}",
        "",
        f"Command: `{report['command']}`",
        "",
        f"Machine: {machine['cores']} cores ({machine['cpu_model']}), {machine['memory_gib']} GiB, Python {machine['python']},"
        f" PostgreSQL {report['journal'].get('server_version', '?')}; load average at start {machine['load_average_at_start']};"
        f" machine busy {report['machine_cost']['machine_busy_fraction']:.0%} during the run"
        f" ({_seconds(report['machine_cost'].get('other_cpu_s'))} of CPU by processes other than the bench's and PostgreSQL).",
        "",
        "| figure | value | note |",
        "| --- | --- | --- |",
    ]
    lines += [f"| {a} | {b} | {c} |" for a, b, c in headline_rows(report)]
    lines += ["", "## Latency by operation (ms)", "", "| operation | count | p50 | p90 | p99 | p99.9 | max |", "| --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for name, figures in report["operations"].items():
        if figures["count"]:
            values = " | ".join(_number(figures[key]) for key in ("p50_ms", "p90_ms", "p99_ms", "p999_ms", "max_ms"))
            lines.append(f"| {'end to end' if name == 'e2e' else name} | {figures['count']:,} | {values} |")
    lines += ["", "## Baselines (measured in the same run)", "", "| baseline | figures |", "| --- | --- |"]
    for name, values in report["baselines"].items():
        lines.append(f"| {name} | " + ", ".join(f"{key} {_number(value)}" for key, value in values.items()) + " |")
    lines += ["", "## Ratios to the baselines", ""]
    for figure, values in report["ratios"].items():
        lines.append(f"- {figure}: " + (", ".join(f"{key} {_number(value)}" for key, value in values.items()) or "-"))
    lines += ["", "## Errors by kind", ""]
    lines += [f"- {kind}: {count:,} ({_counted_as(report, kind)})" for kind, count in report["errors"].items()] or ["none"]
    lines += ["", "## Invariants", "", "Over the whole database, replayed from the journal as a node recovers it:", "", "```", report["invariants"].get("table", ""), "```", ""]
    for index, worker in enumerate(report["invariants"].get("workers", [])):
        lines.append(
            f"- worker {index}: its partitions against its own simulator's record ({worker['network_operations']:,} network operations):"
            f" {worker['violations_total']} violations; checked {worker['checked']}"
        )
    lines.append("")
    lines += ["## Plots", ""] + [f"![{name}]({file})" for name, file in PLOTS.items()] + [""]
    return "\n".join(lines)
