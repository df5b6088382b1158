"""Reports for bench/run: results.json, results.md, charts, and py-spy hot spots.

bench/run imports this module. It also works on its own:

    python bench/report.py render bench/results/<run>            # re-render md + charts
    python bench/report.py compare bench/results/<a> bench/results/<b> ...   # one table
"""

from __future__ import annotations

import argparse
import re
import sys
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, Final

import orjson

FRAME = re.compile(r"^(?P<function>.*?) \((?P<file>[^()]*?)(?::(?P<line>\d+))?\)$")
SITE_PACKAGES = re.compile(r"^.*?/(?:site|dist)-packages/")
REPO_PYTHON = re.compile(r"^.*?/python/walletgate/")
STDLIB = re.compile(r"^.*?/lib/python3\.\d+/")
TOP_N = 25


# -- py-spy ------------------------------------------------------------------------------------


def short_path(path: str) -> str:
    path = REPO_PYTHON.sub("walletgate/", path)
    path = SITE_PACKAGES.sub("", path)
    return STDLIB.sub("<stdlib>/", path)


def split_frame(frame: str) -> tuple[str, str, str]:
    """(function, short file, line) of one py-spy frame ``function (file:line)``."""
    match = FRAME.match(frame.strip())
    if match is None:
        return frame.strip(), "?", ""
    return match["function"], short_path(match["file"]), match["line"] or ""


def area(file: str) -> str:
    """A coarse owner of a frame's file, to see where the time goes by layer."""
    if file.startswith("walletgate/"):
        parts = file.split("/")
        return "/".join(parts[:2]) if len(parts) > 2 else file
    if file.startswith("<stdlib>/"):
        name = file.removeprefix("<stdlib>/")
        return "stdlib/" + name.split("/")[0]
    if "/" in file:
        return file.split("/")[0]
    return file


def read_raw(paths: Iterable[Path]) -> list[tuple[list[str], int]]:
    stacks: list[tuple[list[str], int]] = []
    for path in paths:
        for line in path.read_text(errors="replace").splitlines():
            stack, _, count = line.rpartition(" ")
            if stack and count.isdigit():
                stacks.append((stack.split(";"), int(count)))
    return stacks


THREAD_FRAME = re.compile(r"^thread \((?P<tid>\d+)\)(?::\s*(?P<name>.*))?$")


def hot_spots(
    paths: Sequence[Path],
    *,
    seconds: float,
    rate: int,
    thread_names: dict[str, str] | None = None,
) -> dict[str, Any]:
    """Self and inclusive sample shares per function, per file, per area and per thread.

    bench/run records with ``--gil``: a sample is the stack of the thread holding the GIL, so
    ``busy_share`` = samples / (seconds x rate x processes) is the share of time the GIL was
    held, i.e. how busy the worker's Python side was.
    Percentages are of all recorded samples. With ``--threads`` each stack starts with a
    ``thread (<tid>): <name>`` frame; ``thread_names`` maps tids to their /proc comm names.
    A stack with no Python frame is a thread running native code with a Python thread state
    (Granian's Rust threads calling into Python, for example).
    """
    stacks = read_raw(paths)
    total = sum(count for _, count in stacks)
    self_fn: Counter[str] = Counter()
    self_line: Counter[str] = Counter()
    self_file: Counter[str] = Counter()
    self_area: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    per_thread: Counter[str] = Counter()
    names = thread_names or {}
    for all_frames, count in stacks:
        frames = all_frames
        thread = THREAD_FRAME.match(frames[0].strip())
        if thread is not None:
            tid = thread["tid"]
            label = names.get(tid) or thread["name"] or "thread"
            per_thread[f"{label} ({tid})"] += count
            frames = frames[1:]
            if not frames:
                frames = [f"<native code, no Python frame> ({label})"]
        leaf_function, leaf_file, leaf_line = split_frame(frames[-1])
        self_fn[f"{leaf_function} ({leaf_file})"] += count
        self_line[f"{leaf_function} ({leaf_file}:{leaf_line})"] += count
        self_file[leaf_file] += count
        self_area[area(leaf_file)] += count
        seen: set[str] = set()
        for frame in frames:
            function, file, _ = split_frame(frame)
            label = f"{function} ({file})"
            if label not in seen:
                seen.add(label)
                inclusive[label] += count

    def top(counter: Counter[str], n: int = TOP_N) -> list[dict[str, Any]]:
        return [
            {"name": name, "samples": samples, "percent": round(100 * samples / total, 2)}
            for name, samples in counter.most_common(n)
        ]

    expected = seconds * rate * max(1, len(paths))
    return {
        "samples": total,
        "busy_share": round(total / expected, 3) if expected else None,
        "self_by_function": top(self_fn) if total else [],
        "self_by_line": top(self_line) if total else [],
        "self_by_file": top(self_file, 15) if total else [],
        "self_by_area": top(self_area, 15) if total else [],
        "inclusive_by_function": top(inclusive, 40) if total else [],
        "by_thread": top(per_thread, 20) if total else [],
    }


# -- results -----------------------------------------------------------------------------------


def _levels(results: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per concurrency level, walletgate and bare side by side."""
    bare = {run["connections"]: run for run in results.get("bare", [])}
    rows = []
    for run in results.get("walletgate", []):
        other = bare.get(run["connections"])
        ratio = run["rps"] / other["rps"] if other and other["rps"] else None
        rows.append({"walletgate": run, "bare": other, "ratio": ratio})
    return rows


def _fmt(value: Any, digits: int = 2) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:,.{digits}f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def _pct(ratio: float | None) -> str:
    return f"{ratio * 100:.1f}%" if ratio else "–"


def markdown(results: dict[str, Any]) -> str:
    options = results.get("options", {})
    lines = [
        f"# walletgate benchmark {results.get('started_at', '')}",
        "",
        f"workers {options.get('workers')}, journal {'on' if options.get('journal') else 'off'}, "
        f"Redis AOF {'on' if options.get('redis_aof') else 'off'}, wrk threads "
        f"{options.get('wrk_threads')}, warm-up {options.get('warmup_s')} s, measured "
        f"{options.get('duration_s')} s per level, {options.get('players')} players, "
        f"payout ratio {options.get('payout_ratio')}"
        + (
            f", paced at {options['rate_rps']:,.0f} req/s (Poisson arrivals per connection)"
            if options.get("rate_rps")
            else ", as fast as possible"
        )
        + (" (quick)" if options.get("quick") else ""),
        "",
    ]
    machine = results.get("machine", {})
    if machine:
        lines += [
            f"machine: {machine.get('cpu')}, {machine.get('cores')} cores, "
            f"{machine.get('memory')}, Linux {machine.get('kernel')} ({machine.get('note')})",
            "",
        ]
    lines += [
        "| connections | walletgate req/s | bare req/s | walletgate/bare | wg p50 ms "
        "| wg p99 ms | bare p50 ms | bare p99 ms | non-success | socket errors |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in _levels(results):
        wg, bare = row["walletgate"], row["bare"]
        errors = sum(wg["socket_errors"].values())
        lines.append(
            f"| {wg['connections']} | {_fmt(wg['rps'], 0)} | "
            f"{_fmt(bare['rps'] if bare else None, 0)} | "
            f"{_pct(row['ratio'])} | "
            f"{_fmt(wg['latency_ms'].get('p50'))} | {_fmt(wg['latency_ms'].get('p99'))} | "
            f"{_fmt(bare['latency_ms'].get('p50') if bare else None)} | "
            f"{_fmt(bare['latency_ms'].get('p99') if bare else None)} | "
            f"{wg['nonsuccess']} | {errors} |"
        )
    cpu_rows = [
        f"| {run['name']} | {_fmt(run['rps'], 0)} | {cores.get('server')} | "
        f"{cores.get('journal', '–')} | {_per_request(cores, run['rps'])} | "
        f"{cores.get('redis', '–')} | {cores.get('wrk')} | {cores.get('irq', '–')} | "
        f"{cores.get('other')} | {cores.get('steal', '–')} | {cores.get('machine_busy')} | "
        f"{_threads(cores)} |"
        for run in results.get("walletgate", []) + results.get("bare", [])
        if (cores := run.get("cpu_cores"))
    ]
    if cpu_rows:
        lines += [
            "",
            "CPU cores used during each measured run, from /proc: server is `walletgate serve` "
            "and its workers, journal the journal-writer sidecar (when serve runs one), irq is "
            "interrupt time "
            "(loopback networking, charged to no process), other is every other process on "
            "the machine (concurrent jobs), steal is time the hypervisor gave away:",
            "",
            "| run | req/s | server | journal | gateway µs/req | redis | wrk | irq | other "
            "| steal | machine busy | worker threads |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
            *cpu_rows,
        ]
    lines += budget_markdown(results)
    lines += redis_markdown(results)
    details = []
    for run in results.get("walletgate", []) + results.get("bare", []):
        # The baseline replays its requests by design; only walletgate's must be unique.
        wrapped = run.get("wrapped") if run["target"] == "walletgate" else 0
        if run["nonsuccess"] or any(run["socket_errors"].values()) or wrapped:
            details.append(
                f"* {run['name']}: non-success {run['nonsuccess_codes'] or 0}, "
                f"socket errors {run['socket_errors']}, HTTP status errors "
                f"{run['http_status_errors']}, replayed after running out {wrapped}"
            )
    if details:
        lines += ["", "Non-success answers and errors:", "", *details]
    check = results.get("money_check")
    verdict = results.get("verdict", {})
    if check:
        lines += [
            "",
            f"Money check: **{'OK' if check['ok'] else 'FAILED'}** ({check['method']} lookups): "
            f"{check['players_checked']} players, {check['requests_applied']:,} applied of "
            f"{check['requests_issued']:,} issued, debited {check['debited']}, credited "
            f"{check['credited']}, {check['lookups']:,} stored-outcome lookups, "
            f"{check['issued_not_applied']} issued but not applied (in flight at stop).",
        ]
        if check["mismatch_count"]:
            lines += ["", *(f"* {m}" for m in check["mismatches"])]
    if "nonsuccess_all_phases" in verdict:
        lines.append(
            f"Non-success answers over every walletgate run (warm-ups included): "
            f"{verdict['nonsuccess_all_phases']}."
        )
    verify = results.get("journal_verify")
    if verify:
        lines += ["", f"`walletgate journal verify`: exit {verify['exit_code']}"]
    profile = results.get("profile")
    if profile:
        lines += ["", *profile_markdown(profile)]
    return "\n".join(lines) + "\n"


# The processes one request needs, whatever serves it: the server (and its journal sidecar),
# Redis, the load generator and the loopback interrupts. "other" and "steal" are left out:
# they are the machine's noise, not the cost of a request.
BUDGET_PARTS: Final = ("server", "journal", "redis", "wrk", "irq")


def cpu_per_request_us(cores: dict[str, float], rps: float) -> dict[str, float] | None:
    """CPU µs per request of each part in BUDGET_PARTS and their "total", or None without rps."""
    if rps <= 0:
        return None
    parts = {part: 1e6 * cores.get(part, 0.0) / rps for part in BUDGET_PARTS}
    parts["total"] = sum(parts.values())
    return parts


def cpu_budget(results: dict[str, Any]) -> list[dict[str, Any]]:
    """What the machine's CPU allows, per concurrency level with both targets measured.

    When both runs saturate the same cores, the throughput ratio tends to the inverse ratio of
    their CPU per request (``ratio_at_equal_cpu``). ``ratio_bound_redis`` is the ratio even a
    gateway whose own work cost no more than the bare endpoint's would reach, because Redis
    (and the journal sidecar) run on the same cores: bare / (bare + Redis + journal).
    """
    rows = []
    for level in _levels(results):
        wg, bare = level["walletgate"], level["bare"]
        if not bare or not wg.get("cpu_cores") or not bare.get("cpu_cores"):
            continue
        wg_us = cpu_per_request_us(wg["cpu_cores"], wg["rps"])
        bare_us = cpu_per_request_us(bare["cpu_cores"], bare["rps"])
        if wg_us is None or bare_us is None or wg_us["total"] <= 0:
            continue
        extra_us = wg_us["redis"] + wg_us["journal"]
        rows.append(
            {
                "connections": wg["connections"],
                "walletgate_us": wg_us,
                "bare_us": bare_us,
                "ratio_measured": level["ratio"],
                "ratio_at_equal_cpu": bare_us["total"] / wg_us["total"],
                "ratio_bound_redis": bare_us["total"] / (bare_us["total"] + extra_us),
            }
        )
    return rows


def budget_markdown(results: dict[str, Any]) -> list[str]:
    rows = cpu_budget(results)
    if not rows:
        return []
    lines = [
        "",
        "CPU budget: machine CPU µs per request (server + journal + Redis + wrk + irq, as "
        "above). At equal CPU the ratio tends to bare/walletgate; the Redis bound is the ratio "
        "a gateway whose own work cost no more than the bare endpoint's would still reach, "
        "since Redis and the journal sidecar share these cores:",
        "",
        "| connections | walletgate µs/req | of which server | of which Redis | bare µs/req "
        "| measured ratio | ratio at equal CPU | Redis bound |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        wg_us, bare_us = row["walletgate_us"], row["bare_us"]
        lines.append(
            f"| {row['connections']} | {_fmt(wg_us['total'], 0)} | {_fmt(wg_us['server'], 0)} | "
            f"{_fmt(wg_us['redis'], 0)} | {_fmt(bare_us['total'], 0)} | "
            f"{_pct(row['ratio_measured'])} | {_pct(row['ratio_at_equal_cpu'])} | "
            f"{_pct(row['ratio_bound_redis'])} |"
        )
    return lines


REDIS_NESTED_SHOWN: Final = 6


def redis_markdown(results: dict[str, Any]) -> list[str]:
    """Redis's own accounting per request (INFO cpu and commandstats around each run)."""
    runs = [run for run in results.get("walletgate", []) if run.get("redis")]
    if not runs:
        return []
    lines = [
        "",
        "Redis per request, from its own INFO around each run: main-thread CPU; the gateway's "
        "money scripts (EVALSHA) and the journal sidecar's work (its EVAL scripts: stream "
        "lengths, key map, deletes; and its XRANGE reads), script times including the commands "
        "they call (the busiest shown); and the CPU outside any command (sockets, AOF, "
        "timers):",
        "",
        "| run | Redis CPU µs | EVALSHA µs (calls) | journal µs: EVAL + XRANGE (calls) "
        "| outside commands µs | inside the scripts, µs |",
        "|---|---:|---:|---:|---:|---|",
    ]
    for run in runs:
        redis = run["redis"]
        top_level = redis["top_level"]
        evalsha = top_level.get("evalsha")
        journal = [top_level[name] for name in ("eval", "xrange") if name in top_level]
        journal_us = sum(usage["us"] for usage in journal)
        journal_calls = sum(usage["calls"] for usage in journal)
        nested = ", ".join(
            f"{name} {usage['us']:.1f}"
            for name, usage in list(redis["nested"].items())[:REDIS_NESTED_SHOWN]
        )
        lines.append(
            f"| {run['name']} | {redis['cpu_us']:.1f} | "
            + (f"{evalsha['us']:.1f} ({evalsha['calls']:g})" if evalsha else "–")
            + f" | {journal_us:.1f} ({journal_calls:g}) | {redis['outside_commands_us']:.1f} "
            f"| {nested} |"
        )
    return lines


def _per_request(cores: dict[str, float], rps: float) -> str:
    """CPU µs per request of the gateway: the serve process, its workers, the journal sidecar."""
    if not rps:
        return "–"
    return _fmt(1e6 * (cores["server"] + cores.get("journal", 0.0)) / rps, 0)


def _threads(cores: dict[str, float]) -> str:
    """The worker threads' cores, busiest first: "loop 0.93, tokio-rt-worker 0.21"."""
    threads = sorted(
        ((k.removeprefix("thread "), v) for k, v in cores.items() if k.startswith("thread ")),
        key=lambda item: -item[1],
    )
    return ", ".join(f"{name} {value}" for name, value in threads if value >= 0.01) or "–"


def profile_markdown(profile: dict[str, Any]) -> list[str]:
    if "error" in profile:
        return [f"Profile: {profile['error']}"]
    run = profile.get("run_under_profiler", {})
    lines = [
        "## Profile (py-spy)",
        "",
        f"{profile['samples']:,} samples (py-spy --gil: the thread holding the GIL) from "
        f"workers {profile.get('workers')}; GIL held {profile.get('busy_share')} of the time "
        f"(samples / duration x rate); the profiled run did "
        f"{_fmt(run.get('rps'), 0)} req/s.",
    ]
    for title, key in (
        ("Samples by thread", "by_thread"),
        ("Self time by function (leaf frame)", "self_by_function"),
        ("Self time by line", "self_by_line"),
        ("Self time by file", "self_by_file"),
        ("Self time by area", "self_by_area"),
        ("Inclusive time by function", "inclusive_by_function"),
    ):
        lines += ["", f"### {title}", "", "| % | samples | where |", "|---:|---:|---|"]
        lines += [
            f"| {item['percent']:.1f} | {item['samples']:,} | `{item['name']}` |"
            for item in profile.get(key, [])
        ]
    sidecar = profile.get("journal_sidecar")
    if sidecar and sidecar.get("samples"):
        lines += [
            "",
            f"### Journal sidecar {sidecar.get('pids')}: {sidecar['samples']:,} samples, GIL "
            f"held {sidecar.get('busy_share')} of the time",
            "",
            "| % | samples | where |",
            "|---:|---:|---|",
        ]
        lines += [
            f"| {item['percent']:.1f} | {item['samples']:,} | `{item['name']}` |"
            for item in sidecar.get("self_by_function", [])[:15]
        ]
    return lines


def charts(results: dict[str, Any], out: Path) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = _levels(results)
    if not rows:
        return []
    x = [row["walletgate"]["connections"] for row in rows]
    written = []
    figure, axis = plt.subplots(figsize=(7, 4.5))
    walletgate_rps = [r["walletgate"]["rps"] for r in rows]
    axis.plot(x, walletgate_rps, "o-", color="tab:blue", label="walletgate change_balance")
    if all(r["bare"] for r in rows):
        bare_rps = [r["bare"]["rps"] for r in rows]
        axis.plot(x, bare_rps, "s--", color="tab:orange", label="bare Starlette + Granian")
    title = _title("Throughput vs concurrency", results)
    written.append(
        _write_chart(plt, figure, axis, x, "requests / s", title, out / "throughput.png")
    )

    figure, axis = plt.subplots(figsize=(7, 4.5))
    for target, color in (("walletgate", "tab:blue"), ("bare", "tab:orange")):
        if not all(r[target] for r in rows):
            continue
        for percentile, style in (("p50", "o-"), ("p99", "^--")):
            values = [r[target]["latency_ms"][percentile] for r in rows]
            axis.plot(x, values, style, color=color, label=f"{target} {percentile}")
    title = _title("Latency vs concurrency", results)
    written.append(_write_chart(plt, figure, axis, x, "latency (ms)", title, out / "latency.png"))
    return written


def _write_chart(
    plt: Any, figure: Any, axis: Any, x: list[int], ylabel: str, title: str, path: Path
) -> str:
    """Finish a chart on the axes both share (connections on a log-2 scale, values from 0),
    write it as PNG, free it, and give its file name."""
    axis.set_xlabel("connections (wrk, 2 threads)")
    axis.set_ylabel(ylabel)
    axis.set_xscale("log", base=2)
    axis.set_xticks(x, [str(v) for v in x])
    axis.set_ylim(bottom=0)
    axis.grid(True, alpha=0.3)
    axis.legend()
    axis.set_title(title)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return path.name


def _title(what: str, results: dict[str, Any]) -> str:
    options = results.get("options", {})
    journal = "on" if options.get("journal") else "off"
    return f"{what} ({options.get('workers')} worker(s), journal {journal})"


def write_all(results: dict[str, Any], out: Path) -> None:
    results["charts"] = charts(results, out)
    results["cpu_budget"] = cpu_budget(results)
    (out / "results.json").write_bytes(orjson.dumps(results, option=orjson.OPT_INDENT_2))
    (out / "results.md").write_text(markdown(results), encoding="utf-8")


def compare(directories: Sequence[Path]) -> str:
    """One table across runs (e.g. journal on, journal off, 2 workers)."""
    lines = [
        "| run | connections | walletgate req/s | bare req/s | walletgate/bare | wg p50 ms "
        "| wg p99 ms | non-success | socket errors | money | journal verify |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|",
    ]
    for directory in directories:
        results = orjson.loads((directory / "results.json").read_bytes())
        options = results["options"]
        name = f"{options['workers']}w journal {'on' if options['journal'] else 'off'}"
        money = results.get("money_check", {}).get("ok")
        verify = results.get("journal_verify", {}).get("exit_code")
        for row in _levels(results):
            wg, bare = row["walletgate"], row["bare"]
            lines.append(
                f"| {name} | {wg['connections']} | {_fmt(wg['rps'], 0)} | "
                f"{_fmt(bare['rps'] if bare else None, 0)} | "
                f"{_pct(row['ratio'])} | "
                f"{_fmt(wg['latency_ms']['p50'])} | {_fmt(wg['latency_ms']['p99'])} | "
                f"{wg['nonsuccess']} | {sum(wg['socket_errors'].values())} | "
                f"{'OK' if money else 'FAILED'} | {verify} |"
            )
    return "\n".join(lines) + "\n"


# -- the targets, over interleaved rounds (bench/run --targets N) --------------------

TARGET_CONNECTIONS: Final = 64
TARGET_RATIO: Final = 0.75
TARGET_P99_MS: Final = 15.0
TARGET_JOURNAL_COST: Final = 0.10
# The configurations of one round, run in this order: the baseline (1 worker, journal on, with
# the bare app), then the same without the journal, then with 2 workers.
TARGET_CONFIGS: Final = ("baseline", "journal off", "2 workers")


def target_level(connections: Sequence[int]) -> int:
    """The concurrency the targets are read at: 64 when the ladder has it, else its top."""
    return TARGET_CONNECTIONS if TARGET_CONNECTIONS in connections else max(connections)


def _run_at(results: dict[str, Any], side: str, connections: int) -> dict[str, Any]:
    for run in results.get(side, []):
        if run["connections"] == connections:
            return dict(run)
    raise ValueError(f"no {side} run at {connections} connections")


def _median(values: Sequence[float]) -> float:
    ordered = sorted(values)
    middle = len(ordered) // 2
    if len(ordered) % 2:
        return float(ordered[middle])
    return (ordered[middle - 1] + ordered[middle]) / 2


def targets(rounds: Sequence[dict[str, dict[str, Any]]], connections: int) -> dict[str, Any]:
    """The issue's four targets from interleaved rounds, each round a results.json per config
    (TARGET_CONFIGS). Every figure is a per-round value first (a ratio within one round, where
    the configurations ran minutes apart), then the median over rounds, so that drift of the
    machine between rounds cancels out instead of deciding the verdict.
    """
    assert rounds, "at least one round"
    ratio, p99_ms, journal_cost, workers_gain = [], [], [], []
    rps: dict[str, list[float]] = {config: [] for config in TARGET_CONFIGS}
    nonsuccess = 0
    checks_ok = True
    for round_results in rounds:
        assert set(round_results) == set(TARGET_CONFIGS), sorted(round_results)
        runs = {
            config: _run_at(results, "walletgate", connections)
            for config, results in round_results.items()
        }
        bare = _run_at(round_results["baseline"], "bare", connections)
        for config, run in runs.items():
            rps[config].append(float(run["rps"]))
            nonsuccess += int(run["nonsuccess"])
        for results in round_results.values():
            verdict = results.get("verdict", {})
            checks_ok &= bool(verdict.get("money_ok")) and bool(verdict.get("journal_verify_ok"))
        baseline_rps = float(runs["baseline"]["rps"])
        ratio.append(baseline_rps / float(bare["rps"]))
        p99_ms.append(float(runs["baseline"]["latency_ms"]["p99"]))
        journal_cost.append(1 - baseline_rps / float(runs["journal off"]["rps"]))
        workers_gain.append(float(runs["2 workers"]["rps"]) / baseline_rps - 1)

    def target(values: list[float], goal: str, met: bool) -> dict[str, Any]:
        return {"per_round": values, "median": _median(values), "goal": goal, "met": met}

    return {
        "connections": connections,
        "rounds": len(rounds),
        "median_rps": {config: _median(values) for config, values in rps.items()},
        "nonsuccess": nonsuccess,
        "checks_ok": checks_ok,
        "ratio": target(
            ratio,
            f">= {TARGET_RATIO:.0%}, zero non-success",
            _median(ratio) >= TARGET_RATIO and nonsuccess == 0,
        ),
        "p99_ms": target(p99_ms, f"< {TARGET_P99_MS:g} ms", _median(p99_ms) < TARGET_P99_MS),
        "journal_cost": target(
            journal_cost,
            f"< {TARGET_JOURNAL_COST:.0%}",
            _median(journal_cost) < TARGET_JOURNAL_COST,
        ),
        "workers_gain": target(workers_gain, "> 0", _median(workers_gain) > 0),
    }


def targets_markdown(summary: dict[str, Any]) -> str:
    rounds, level = summary["rounds"], summary["connections"]
    lines = [
        f"# walletgate targets: {rounds} interleaved round(s) at {level} connections",
        "",
        "Each round runs 1 worker with the journal (and the bare app), then without the "
        "journal, then 2 workers; each figure is computed within a round, then the median over "
        "rounds is taken.",
        "",
        "| target | goal | median | per round | met |",
        "|---|---|---:|---|---|",
    ]
    rows = (
        ("walletgate / bare", "ratio", _pct),
        ("p99 latency (1 worker)", "p99_ms", lambda value: f"{value:.1f} ms"),
        ("journal cost (1 − on/off)", "journal_cost", lambda value: f"{value * 100:.1f}%"),
        ("2 workers over 1", "workers_gain", lambda value: f"{value * 100:+.1f}%"),
    )
    for title, name, show in rows:
        target = summary[name]
        per_round = ", ".join(show(value) for value in target["per_round"])
        met = "yes" if target["met"] else "**no**"
        lines.append(
            f"| {title} | {target['goal']} | {show(target['median'])} | {per_round} | {met} |"
        )
    median_rps = ", ".join(
        f"{config} {value:,.0f}" for config, value in summary["median_rps"].items()
    )
    lines += [
        "",
        f"Median walletgate req/s: {median_rps}. Non-success answers: {summary['nonsuccess']}. "
        f"Money checks and `journal verify`: {'OK' if summary['checks_ok'] else '**FAILED**'}.",
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    commands = parser.add_subparsers(dest="command", required=True)
    render = commands.add_parser("render", help="re-render results.md and the charts")
    render.add_argument("directory", type=Path)
    comparison = commands.add_parser("compare", help="one markdown table across runs")
    comparison.add_argument("directories", type=Path, nargs="+")
    arguments = parser.parse_args(argv)
    named = [arguments.directory] if arguments.command == "render" else arguments.directories
    missing = [str(directory) for directory in named if not (directory / "results.json").is_file()]
    if missing:
        print(f"report: no results.json in {', '.join(missing)}", file=sys.stderr)
        return 2
    if arguments.command == "render":
        results = orjson.loads((arguments.directory / "results.json").read_bytes())
        write_all(results, arguments.directory)
        print(markdown(results))
    else:
        print(compare(arguments.directories))
    return 0


if __name__ == "__main__":
    sys.exit(main())
