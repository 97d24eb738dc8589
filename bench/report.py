"""The bench's report (``bench/run.py``): medians per scenario (``summarise``), and the table
with the details below it that the bench prints (``render``); and ``bench/scale.py``'s cost
curve (``render_scale``)."""

from __future__ import annotations

import statistics
from typing import Any

# -- the report --------------------------------------------------------------------------------


def summarise(result: dict[str, Any]) -> dict[str, Any]:
    """Medians per scenario (each over ``repeat`` runs)."""
    out: dict[str, Any] = {}
    for scenario, runs in result.get("scenarios", {}).items():
        ends = [r["end_s"] for r in runs]
        med = statistics.median(ends)
        barriers = [r["barrier_s"] for r in runs if r["barrier_s"] is not None]
        floors = [r["paired_floor_s"] for r in runs if r.get("paired_floor_s")]
        pairs = [r for r in runs if r.get("paired_floor_s") and r["barrier_s"] is not None]
        out[scenario] = {
            "median_s": med,
            "barrier_median_s": statistics.median(barriers) if barriers else None,
            # Each run's barrier over the floor round timed just before it (--paired-floor).
            "paired_floor_median_s": statistics.median(floors) if floors else None,
            "paired_ratio_median": statistics.median(
                r["barrier_s"] / r["paired_floor_s"] for r in pairs
            )
            if pairs
            else None,
            "min_s": min(ends),
            "max_s": max(ends),
            "rows": runs[0]["rows"],
            "results_per_s": runs[0]["rows"] / med if med > 0 else None,
            "events_per_run": statistics.median(r["instance_events"] for r in runs),
            "cpu_median_s": {
                k: statistics.median(r["cpu_s"][k] for r in runs)
                for k in ("ns", "ts", "bench", "others")
            },
            "bench_gc_s": [round(r.get("bench_gc_s", 0.0), 3) for r in runs],
            "bench_full_gcs": sum(r.get("bench_full_gcs", 0) for r in runs),
            "all_ok": all(r["ok"] for r in runs),
            "not_succeeded": sum(r["rows"] - r["statuses"].get("succeeded", 0) for r in runs),
        }
    return out


def _table(rows: list[tuple[str, ...]]) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    out = []
    for j, r in enumerate(rows):
        out.append("  ".join(c.ljust(widths[i]) for i, c in enumerate(r)).rstrip())
        if j == 0:
            out.append("  ".join("-" * w for w in widths))
    return "\n".join(out)


def _source_line(src: dict[str, Any]) -> str:
    line = f"source: commit {src.get('commit', '?')}, sources sha256 {src['sources_sha256']}"
    if src.get("uncommitted"):
        line += f", uncommitted changes in {', '.join(src['uncommitted'])}"
    if src.get("changed_during_bench"):
        line += "\nWARNING: the product's sources changed while the benchmark ran: discard these figures"
    return line


def render(suite: dict[str, Any]) -> str:
    m = suite["machine"]
    lines = [
        "",
        "taskfleet benchmark (NS and TS as processes, agents and floor clients in the bench process;"
        " the paired floor's clients in a process of their own)",
        f"machine: {m['nproc']} CPUs, Python {m['python']}, {m['platform']}, "
        f"open files {m['nofile'][0]}",
        f"CPU speed (plain Python loop, M steps/s, before / after): "
        f"{m.get('calibration_before', 0):.1f} / {m.get('calibration_after', 0):.1f}",
        f"command: {suite['command']}",
        _source_line(suite["source"]),
        f"transport: {'plain ws:// (--insecure)' if suite['insecure'] else 'TLS, pinned'}; "
        f"every time is the median of {suite['repeat']} runs (floor: of {suite['repeat']} rounds"
        " before taskfleet's runs and as many after)",
        "agents' tasks: "
        + (
            "real (the `noop` type through the agent's general task path)"
            if suite.get("agent_tasks") == "real"
            else "simulated (a no-op that ends inline, as `taskfleet simulate` runs it)"
        ),
        *([f"label: {suite['label']}"] if suite.get("label") else []),
        "",
    ]
    head: tuple[str, ...] = ("N", "TS", "floor round", "connect+enrol")
    head += tuple(f"{s} s" for s in suite["scenarios"])
    head += (
        "step barrier",
        "barrier/floor",
        "barrier/floor(tlsio)",
        "barrier/floor(paired)",
        "results/s (step)",
        "NS RSS MiB (peak)",
        "TS KiB/agent",
        "all ok",
    )
    rows: list[tuple[str, ...]] = [head]
    for res in suite["results"]:
        n = res["agents"]
        fl = suite["floors"].get(str(n))
        ft = suite.get("floors_tlsio", {}).get(str(n))
        summ = res["summary"]
        cells: tuple[str, ...] = (
            f"{n}",
            f"{res['taskservers']}",
            f"{fl['round_median_s']:.3f} s" if fl else "-",
            f"{res['connect']['all_online_s']:.1f} s",
        )
        cells += tuple(
            f"{summ[s]['median_s']:.3f}" if s in summ else "-" for s in suite["scenarios"]
        )
        step = summ.get("step")
        barrier = step["barrier_median_s"] if step else None
        cells += (
            f"{barrier:.3f} s" if barrier is not None else "-",
            f"{barrier / fl['round_median_s']:.2f}x" if barrier is not None and fl else "-",
            f"{barrier / ft['round_median_s']:.2f}x" if barrier is not None and ft else "-",
            f"{step['paired_ratio_median']:.2f}x" if step and step["paired_ratio_median"] else "-",
            f"{res['agents'] / barrier:.0f}" if barrier else "-",
            f"{res['ns_rss_mib']['after_runs']:.0f} ({res['ns_rss_mib']['peak']:.0f})",
            f"{res['ts_kib_per_agent']:.1f}",
            "yes" if all(v["all_ok"] for v in summ.values()) else "NO",
        )
        rows.append(cells)
    lines.append(_table(rows))
    lines.append("")
    lines.append(
        "floor: bare websockets + msgpack, one message to each of N connections and every reply "
        "back (bench/floor.py); step: a one-step server job, run.start until the run's end "
        "(barrier released, every result stored); step barrier: on the NS's clock, from the run's "
        "creation to the barrier's release (the next step's start); job3 / client3: three noop steps; "
        "results/s: N / step barrier; TS KiB/agent: growth of every TS's RSS while the N connect, / N"
    )
    for res in suite["results"]:
        lines.append("")
        c = res["connect"]
        lines.append(
            f"N={res['agents']}, {res['taskservers']} TS: connected {c['agents_connected_s']:.1f} s, "
            f"online at the NS {c['all_online_s']:.1f} s, per TS {c['per_taskserver']}, connect CPU "
            + " / ".join(f"{k} {c['cpu_s'][k]:.1f}" for k in ("ns", "ts", "bench", "others"))
            + " s"
        )
        idle = res.get("idle_cpu_pct")
        if idle:
            lines.append(
                "  idle (connected, nothing run): CPU "
                + " / ".join(f"{k} {idle[k]:.1f}" for k in ("ns", "ts", "bench", "others"))
                + " % of one CPU"
            )
        for s, v in res["summary"].items():
            cpu = v["cpu_median_s"]
            lines.append(
                f"  {s}: median {v['median_s']:.3f} s (min {v['min_s']:.3f}, max {v['max_s']:.3f})"
                + (
                    f", barriers released at {v['barrier_median_s']:.3f} s"
                    if v["barrier_median_s"] is not None
                    else ""
                )
                + ", "
                f"{v['rows']} rows, {v['events_per_run']:.0f} watch changes, CPU per run NS "
                f"{cpu['ns']:.2f} / TS {cpu['ts']:.2f} / bench {cpu['bench']:.2f} / others "
                f"{cpu['others']:.2f} s" + ("" if v["all_ok"] else f", {v['not_succeeded']} NOT OK")
            )
            if v.get("paired_floor_median_s"):
                runs = res["scenarios"][s]
                lines.append(
                    "    floor round just before each run: "
                    + ", ".join(f"{r['paired_floor_s']:.3f}" for r in runs)
                    + f" s (median {v['paired_floor_median_s']:.3f})"
                    + (
                        "; barrier / that round: "
                        + ", ".join(f"{r['barrier_s'] / r['paired_floor_s']:.2f}x" for r in runs)
                        + f" (median {v['paired_ratio_median']:.2f}x)"
                        if v["paired_ratio_median"] and s == "step"  # job3: three barriers
                        else ""
                    )
                    + "; its CPU server / clients "
                    + f"{statistics.median(r['paired_floor_cpu_s']['server'] for r in runs):.2f} / "
                    + f"{statistics.median(r['paired_floor_cpu_s']['clients'] for r in runs):.2f} s"
                )
            if "bench_gc_s" in v:
                lines.append(
                    "    bench process in the garbage collector per run: "
                    + ", ".join(f"{t:.3f}" for t in v["bench_gc_s"])
                    + f" s ({v['bench_full_gcs']} full collections in all)"
                )
            if cpu["others"] > 0.1 * (cpu["ns"] + cpu["ts"] + cpu["bench"]):
                lines.append("    WARNING: other processes were busy during these runs")
        for k, r in res["rss_kib"].items():
            lines.append(
                f"  RSS {k}: before {r['before'] / 1024:.0f}, after connect "
                f"{r['after_connect'] / 1024:.0f}, after runs {r['after_runs'] / 1024:.0f}, "
                f"peak {r['peak'] / 1024:.0f} MiB"
            )
        for name, problems in res.get("server_log_problems", {}).items():
            if problems:
                lines.append(f"  {name} log warnings/errors: {problems}")
        for which, prof in res.get("profiles", {}).items():
            lines.append(
                f"  py-spy profile of the {which.upper()} ({prof['phase']} phase, "
                f"{prof['samples']} samples, raw stacks {prof['raw']})"
            )
            top = [("incl %", "function")] + [
                (f"{f['percent']:.1f}", f["function"]) for f in prof["top_inclusive"]
            ]
            lines.append(_table(top))
    floors = [*suite["floors"].items(), *suite.get("floors_tlsio", {}).items()]
    for n, fl in floors:
        lines.append("")
        split = (
            f" (median before the runs {fl['round_median_before_s']:.3f} s, after"
            f" {fl['round_median_after_s']:.3f} s)"
            if "round_median_after_s" in fl
            else ""
        )
        lines.append(
            f"floor N={n} ({fl['transport']}): rounds "
            + ", ".join(f"{t:.3f}" for t in fl["rounds_s"])
            + f" s{split}; connect {fl['connect_s']:.1f} s; server RSS {fl['server_rss_per_conn_kib']:.1f}"
            f" KiB per connection; CPU per round server {fl.get('cpu_server_s', 0):.2f} /"
            f" clients {fl.get('cpu_clients_s', 0):.2f} s"
        )
    return "\n".join(lines)


# -- bench/scale.py: the cost curve -------------------------------------------------------


def render_scale(suite: dict[str, Any]) -> str:
    """``bench/scale.py``'s table, a row per N, and each N's details below it."""
    head = (
        "N", "agent procs", "floor round", "step barrier", "barrier/floor", "CPU/floor CPU",
        "floor connect",
        "all online", "NS RSS MiB (peak)", "TS KiB/agent", "sim KiB/agent", "stored once",
        "slow TS step", "restart: all back / admin max, p99",
    )  # fmt: skip
    rows: list[tuple[str, ...]] = [head]
    for r in suite["results"]:
        fl = r.get("floor")
        steps = r.get("steps", [])
        barrier = statistics.median(s["barrier_s"] for s in steps) if steps else None
        bp = r.get("backpressure")
        storms = r.get("storms", {})
        rows.append(
            (
                str(r["agents"]),
                str(r.get("agent_processes", "-")),
                f"{fl['round_median_s']:.3f} s" if fl else "-",
                f"{barrier:.3f} s" if barrier else "-",
                f"{barrier / fl['round_median_s']:.2f}x" if barrier and fl else "-",
                f"{cpu_ratio(r):.2f}x" if steps and fl else "-",
                f"{fl['connect_s']:.1f} s" if fl else "-",
                f"{r['connect_s']:.1f} s" if "connect_s" in r else "-",
                f"{r['ns_rss_mib']['after_runs']:.0f} ({r['ns_rss_mib']['peak']:.0f})"
                if "ns_rss_mib" in r
                else "-",
                f"{r['ts_kib_per_agent']:.1f}" if "ts_kib_per_agent" in r else "-",
                f"{r['sim_kib_per_agent']:.1f}" if "sim_kib_per_agent" in r else "-",
                "yes" if steps and all(s["ok"] for s in [*steps, *([bp] if bp else [])]) else "NO",
                f"{bp['barrier_s']:.3f} s ({bp['pauses']} pauses)" if bp else "-",
                "; ".join(
                    f"{kind} {st['all_back_s']:.0f} s / {st['admin']['max_s']:.3f},"
                    f" {st['admin']['p99_s']:.3f} s"
                    for kind, st in storms.items()
                    if st["admin"]["max_s"] is not None
                )
                or "-",
            )
        )
    m = suite["machine"]
    lines = [
        "",
        f"taskfleet at scale: {m['nproc']} CPUs, load average {m['loadavg']}, "
        f"CPU speed {m['calibration']:.1f}, {suite['date']}, {suite['taskservers']} TS",
        f"source: commit {suite['source'].get('commit', '?')}, "
        f"sha256 {suite['source']['sources_sha256']}"
        + (f"; label: {suite['label']}" if suite.get("label") else ""),
        _table(rows),
    ]
    for r in suite["results"]:
        lines += _scale_details(r)
    return "\n".join(lines)


def cpu_ratio(r: dict[str, Any]) -> float:
    """CPU seconds of a step (NS + every TS + the agents' processes, median over the steps)
    over the floor's per round (its servers + its clients): what the wall-clock ratio tends to
    on a machine whose other load steals time from both unevenly."""
    steps = r["steps"]
    ours = statistics.median(s["cpu_s"]["ns"] + s["cpu_s"]["ts"] + s["cpu_s"]["sim"] for s in steps)
    fl = r["floor"]
    return float(ours / (fl["cpu_server_s"] + fl["cpu_clients_s"]))


def _scale_details(r: dict[str, Any]) -> list[str]:
    """What the table's cells stand on, per N: CPU, each step, queues, the storm."""
    out = [f"N={r['agents']}:"]
    if "failed" in r:
        out.append(f"  FAILED: {r['failed']}")
    if "floor_failed" in r:
        out.append(f"  floor FAILED: {r['floor_failed']}")
    fl = r.get("floor")
    if fl:
        out.append(
            f"  floor: rounds {', '.join(f'{t:.3f}' for t in fl['rounds_s'])} s over"
            f" {fl['servers']} servers and {fl['client_procs']} client processes; CPU per round"
            f" servers {fl['cpu_server_s']:.2f} / clients {fl['cpu_clients_s']:.2f} s;"
            f" servers' RSS {fl['server_rss_per_conn_kib']:.1f} KiB per connection"
        )
    if "connect_cpu_s" in r:
        cpu = r["connect_cpu_s"]
        ts = sum(v for k, v in cpu.items() if k.startswith("ts-"))
        out.append(
            f"  connect CPU: NS {cpu['ns']:.0f} / TS {ts:.0f} / agents {cpu['sim']:.0f} s"
            f" ({1000 * (cpu['ns'] + ts + cpu['sim']) / r['agents']:.1f} ms per agent)"
        )
    storms = r.get("storms", {})
    for s in [*r.get("steps", []), *(st["step"] for st in storms.values() if "step" in st)]:
        cpu = s["cpu_s"]
        out.append(
            f"  step run {s['run_id']}: barrier {s['barrier_s']:.3f} s, end {s['end_s']:.3f} s,"
            f" CPU NS {cpu['ns']:.2f} / TS {cpu['ts']:.2f} / agents {cpu['sim']:.2f} / others"
            f" {cpu['others']:.2f} s; stored {s['stored']}"
        )
    bp = r.get("backpressure")
    if bp:
        peaks = {
            ts: {q: int(v) for q, v in qs.items() if v} for ts, qs in bp["ts_queue_peaks"].items()
        }
        out.append(
            f"  slow TS ({bp['slowed']}, {bp['pauses']} pauses): barrier {bp['barrier_s']:.3f} s,"
            f" stored {bp['stored']}; queue peaks (non-zero) {peaks}; NS RSS peak"
            f" {bp['ns_rss_peak_mib']:.0f} MiB; {bp['samples']} samples, {bp['missed']} missed"
        )
    for st in storms.values():
        a, cpu = st["admin"], st["cpu_s"]
        out.append(
            f"  restart of {', '.join(st['restarted'])}: up again {st['ready_s']:.1f} s, all"
            f" {r['agents']} online again {st['all_back_s']:.1f} s; admin fleet.summary:"
            f" {a['calls']} calls, {a['errors']} errors, median {a['median_s']:.3f} / p99"
            f" {a['p99_s']:.3f} / max {a['max_s']:.3f} s, {a['over_1s']} over 1 s; CPU until then"
            f" NS {cpu['ns']:.0f} / TS {sum(v for k, v in cpu.items() if k.startswith('ts-')):.0f}"
            f" / agents {cpu['sim']:.0f} s; NS RSS after its step {st.get('ns_rss_mib', 0):.0f}"
            f" MiB (peak {st.get('ns_peak_mib', 0):.0f})"
        )
    if "ns_rss_mib" in r:
        out.append(f"  NS RSS MiB: {r['ns_rss_mib']}; TS RSS MiB: {r.get('ts_rss_mib')}")
    for name, problems in r.get("server_log_problems", {}).items():
        if problems:
            out.append(f"  {name} log warnings/errors: {problems}")
    return out
