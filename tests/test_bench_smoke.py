"""CI smoke of the benchmarks: ``bench/run --quick`` and a short headless locust run.

Both drive a real ``walletgate serve`` over a real redis-server. They check correctness, not
speed: bench/run's money check and ``walletgate journal verify`` must pass with zero non-success
answers, and every locust request must count as a success (bad-signature probes included,
since the expected rejection is a success for them).
"""

from __future__ import annotations

import csv
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest

from conftest import RedisServer, free_port, wait_for_port

REPO = Path(__file__).resolve().parent.parent
BENCH = REPO / "bench"
ADMIN_TOKEN = "smoke-admin-token-0123456789abcdef0123"


def _env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    paths = [str(REPO / "python"), env.get("PYTHONPATH", "")]
    env["PYTHONPATH"] = os.pathsep.join(p for p in paths if p)
    env.update(extra)
    return env


def _bench(script: str, *args: str, timeout_s: int) -> str:
    """Run ``bench/<script> args`` to the end; its stdout (its exit status must be 0)."""
    completed = subprocess.run(
        [sys.executable, str(BENCH / script), *args],
        capture_output=True,
        text=True,
        env=_env(),
        timeout=timeout_s,
        check=False,
    )
    assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-3000:]
    return completed.stdout


@pytest.mark.timeout(120)
def test_bench_run_quick(tmp_path: Path) -> None:
    if shutil.which("wrk") is None:
        pytest.skip("wrk is not installed (apt-get install -y wrk)")
    _bench("run", "--quick", "--results", str(tmp_path), timeout_s=110)
    [run_dir] = [p for p in tmp_path.iterdir() if p.is_dir()]
    results = orjson.loads((run_dir / "results.json").read_bytes())
    assert results["money_check"]["ok"], results["money_check"]
    assert results["money_check"]["requests_applied"] > 0
    assert results["journal_verify"]["exit_code"] == 0, results["journal_verify"]
    assert results["verdict"]["nonsuccess_all_phases"] == 0, results["walletgate"]
    assert results["walletgate"] and results["bare"]
    for run in results["walletgate"] + results["bare"]:
        assert run["requests"] > 0
        assert run["latency_ms"]["p99"] >= run["latency_ms"]["p50"] > 0
    [budget] = results["cpu_budget"]
    assert budget["walletgate_us"]["redis"] > 0 and budget["bare_us"]["redis"] == 0
    assert budget["ratio_at_equal_cpu"] > 0 and 0 < budget["ratio_bound_redis"] < 1
    assert "Redis bound" in (run_dir / "results.md").read_text(encoding="utf-8")
    # Redis's own accounting: every bet is one EVALSHA that runs the journal's XADD.
    [redis_usage] = [run["redis"] for run in results["walletgate"]]
    assert redis_usage["cpu_us"] > 0
    assert redis_usage["top_level"]["evalsha"]["calls"] >= 1.0
    assert redis_usage["nested"]["xadd"]["calls"] >= 1.0
    assert "Redis per request" in (run_dir / "results.md").read_text(encoding="utf-8")
    assert (run_dir / "throughput.png").stat().st_size > 0
    assert (run_dir / "latency.png").stat().st_size > 0


@pytest.mark.timeout(120)
def test_bench_run_paced_quick(tmp_path: Path) -> None:
    """``--rate`` paces wrk: a quick run at 200 req/s stays near that rate, far below what the
    machine does unpaced, and the run still checks the money and the journal."""
    if shutil.which("wrk") is None:
        pytest.skip("wrk is not installed (apt-get install -y wrk)")
    argv = ["--quick", "--skip-bare", "--rate", "200", "--connections", "8"]
    _bench("run", *argv, "--results", str(tmp_path), timeout_s=110)
    [run_dir] = [p for p in tmp_path.iterdir() if p.is_dir()]
    assert run_dir.name.endswith("-rate200-quick")
    results = orjson.loads((run_dir / "results.json").read_bytes())
    assert results["options"]["rate_rps"] == 200
    assert results["money_check"]["ok"], results["money_check"]
    assert results["journal_verify"]["exit_code"] == 0, results["journal_verify"]
    assert results["verdict"]["nonsuccess_all_phases"] == 0, results["walletgate"]
    [run] = results["walletgate"]
    # Each connection also waits for its answers, so the pace is reached from below.
    assert 100 <= run["rps"] <= 240, run["rps"]
    assert "paced at 200 req/s" in (run_dir / "results.md").read_text(encoding="utf-8")


def _run(name: str, target: str, rps: float, cores: dict[str, float]) -> dict[str, object]:
    return {
        "name": name,
        "target": target,
        "connections": 64,
        "rps": rps,
        "cpu_cores": cores,
        "latency_ms": {"p50": 1.0, "p99": 2.0},
    }


def test_cpu_budget_arithmetic() -> None:
    sys.path.insert(0, str(BENCH))
    import report

    # walletgate: 1,000 req/s on 0.2 + 0.05 + 0.1 + 0.03 + 0.02 cores = 400 µs per request, of
    # which Redis 100 and the journal 50; bare: 2,000 req/s on 0.2 cores = 100 µs per request.
    results = {
        "walletgate": [
            _run(
                "walletgate-c64",
                "walletgate",
                1000.0,
                {
                    "server": 0.2,
                    "journal": 0.05,
                    "redis": 0.1,
                    "wrk": 0.03,
                    "irq": 0.02,
                    "other": 0.5,
                    "steal": 0.3,
                },
            )
        ],
        "bare": [_run("bare-c64", "bare", 2000.0, {"server": 0.16, "wrk": 0.04, "other": 0.9})],
    }
    [row] = report.cpu_budget(results)
    assert row["walletgate_us"]["total"] == pytest.approx(400.0)
    assert row["bare_us"]["total"] == pytest.approx(100.0)
    assert row["ratio_measured"] == pytest.approx(0.5)
    assert row["ratio_at_equal_cpu"] == pytest.approx(0.25)
    assert row["ratio_bound_redis"] == pytest.approx(100.0 / 250.0)
    # A level without its baseline, or without a rate, gives no row instead of a division by 0.
    assert report.cpu_budget({"walletgate": results["walletgate"], "bare": []}) == []
    results["walletgate"][0]["rps"] = 0.0
    assert report.cpu_budget(results) == []


def _results(rps: float, p99_ms: float, bare_rps: float | None = None) -> dict[str, object]:
    """A results.json with one walletgate run (and one bare run) at 64 connections."""
    walletgate = _run("walletgate-c64", "walletgate", rps, {})
    walletgate["latency_ms"] = {"p50": 1.0, "p99": p99_ms}
    walletgate["nonsuccess"] = 0
    results: dict[str, object] = {
        "walletgate": [walletgate],
        "verdict": {"money_ok": True, "journal_verify_ok": True},
    }
    if bare_rps is not None:
        results["bare"] = [_run("bare-c64", "bare", bare_rps, {})]
    return results


def test_targets_arithmetic() -> None:
    """Each target is computed within a round, then the median over rounds decides."""
    sys.path.insert(0, str(BENCH))
    import report

    def round_of(
        baseline: float, bare: float, off: float, two: float, p99: float
    ) -> dict[str, object]:
        return {
            "baseline": _results(baseline, p99, bare),
            "journal off": _results(off, 1.0),
            "2 workers": _results(two, 1.0),
        }

    rounds = [
        # Round 1: ratio 0.8, journal cost 1 - 800/1000 = 0.2, 2 workers -10 %.
        round_of(800.0, 1000.0, 1000.0, 720.0, 10.0),
        # Round 2: a slower machine, same ratio and journal cost 0.05; 2 workers +10 %.
        round_of(400.0, 500.0, 421.0526315789474, 440.0, 20.0),
        # Round 3: ratio 0.5, journal cost 0, 2 workers +5 %.
        round_of(500.0, 1000.0, 500.0, 525.0, 12.0),
    ]
    summary = report.targets(rounds, 64)
    assert summary["ratio"]["per_round"] == pytest.approx([0.8, 0.8, 0.5])
    assert summary["ratio"]["median"] == pytest.approx(0.8) and summary["ratio"]["met"]
    assert summary["p99_ms"]["median"] == pytest.approx(12.0) and summary["p99_ms"]["met"]
    assert summary["journal_cost"]["per_round"] == pytest.approx([0.2, 0.05, 0.0])
    assert summary["journal_cost"]["median"] == pytest.approx(0.05)
    assert summary["journal_cost"]["met"]
    assert summary["workers_gain"]["median"] == pytest.approx(0.05)
    assert summary["workers_gain"]["met"]
    assert summary["median_rps"]["baseline"] == pytest.approx(500.0)
    assert summary["checks_ok"] and summary["nonsuccess"] == 0
    assert "| walletgate / bare |" in report.targets_markdown(summary)
    # One non-success answer fails the ratio target; a failed money check shows in the summary.
    rounds[0]["2 workers"]["walletgate"][0]["nonsuccess"] = 1  # type: ignore[index]
    rounds[1]["journal off"]["verdict"]["money_ok"] = False  # type: ignore[index]
    summary = report.targets(rounds, 64)
    assert not summary["ratio"]["met"] and summary["nonsuccess"] == 1
    assert not summary["checks_ok"]
    assert "FAILED" in report.targets_markdown(summary)
    assert report.target_level([16, 64, 128]) == 64 and report.target_level([16, 32]) == 32


@pytest.mark.timeout(180)
def test_bench_run_targets_quick(tmp_path: Path) -> None:
    """``bench/run --targets 1 --quick`` runs the three configurations and writes the table."""
    _bench("run", "--quick", "--targets", "1", "--results", str(tmp_path), timeout_s=170)
    [targets_dir] = [p for p in tmp_path.iterdir() if p.name.endswith("-targets-quick")]
    summary = orjson.loads((targets_dir / "targets.json").read_bytes())
    assert summary["rounds"] == 1 and summary["connections"] == 16
    assert summary["checks_ok"] and summary["nonsuccess"] == 0
    [runs] = summary["runs"]
    assert sorted(runs) == ["2 workers", "baseline", "journal off"]
    assert {Path(directory).name.split("-", 1)[1] for directory in runs.values()} == {
        "w1-journal-on-quick",
        "w1-journal-off-quick",
        "w2-journal-on-quick",
    }
    assert 0 < summary["ratio"]["median"] < 2
    assert summary["median_rps"]["2 workers"] > 0
    assert "| 2 workers over 1 |" in (targets_dir / "targets.md").read_text(encoding="utf-8")


def _config(directory: Path, redis_url: str, port: int) -> Path:
    text = f"""
[server]
host = "127.0.0.1"
port = {port}
workers = 1

[redis]
url = "{redis_url}"

[journal]
dir = "{directory / "journal"}"
flush_interval_ms = 50

[admin]
token = "{ADMIN_TOKEN}"

[[minigame.merchants]]
app_id = "10013"
key = "39a6581c31ef3203a22edb2daa2ab6d1"
default_currency = "usdt"
currencies = ["usdt", "usd"]
prefix = "both"

[[transfer.merchants]]
appid = "1005"
key = "transfer-key-3f9a7c1e5d2b4a6c8e0f"
default_currency = "usdt"
currencies = ["usdt"]

[[wallet_v2.agents]]
wallet_token = "smoke_wallet_token"
currencies = ["USD"]
ip_allowlist = []

[[midas.apps]]
appid = "wx1234567"
offer_id = "12345678"
app_key = "zNLgAGgqsEWJOg1nFVaO5r7fAlIQxr1u"
sandbox_app_key = "sandbox-app-key-7d1c3b5a9e2f4d6c"
access_tokens = ["ACCESSTOKEN"]
"""
    path = directory / "walletgate.toml"
    path.write_text(text, encoding="utf-8")
    return path


@pytest.fixture
def served(tmp_path: Path, fresh_redis: RedisServer) -> Iterator[tuple[Path, int]]:
    """``walletgate serve`` on a free port over the test's own redis-server."""
    port = free_port()
    config = _config(tmp_path, fresh_redis.url, port)
    log = (tmp_path / "walletgate.log").open("wb")
    argv = [sys.executable, "-m", "walletgate.cli", "serve", "--config", str(config)]
    process = subprocess.Popen(
        [*argv, "--no-access-log"],
        stdout=log,
        stderr=subprocess.STDOUT,
        env=_env(),
        start_new_session=True,
    )
    try:
        wait_for_port(port, 30)
        time.sleep(0.5)  # the worker binds after the main process
        assert process.poll() is None, (tmp_path / "walletgate.log").read_text()
        yield config, port
    finally:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=5)
        log.close()


@pytest.mark.timeout(90)
@pytest.mark.parametrize("processes", [1, 2])
def test_locust_headless(tmp_path: Path, served: tuple[Path, int], processes: int) -> None:
    """A short headless run, in one process and forked into two (each funds its own players)."""
    config, port = served
    prefix = tmp_path / "locust"
    users = 8  # 2 of each of the 4 classes
    argv = [sys.executable, "-m", "locust", "-f", str(BENCH / "locustfile.py")]
    argv += ["--config", str(BENCH / "locust.conf"), "--headless"]
    argv += ["--host", f"http://127.0.0.1:{port}", "-u", str(users), "-r", str(users)]
    argv += ["-t", "5s", "--csv", str(prefix)]
    if processes > 1:
        # A port of its own for the master: on Locust's default (5557) the workers of another
        # run on this machine would join this one.
        master_port = str(free_port())
        argv += ["--processes", str(processes)]
        argv += ["--master-bind-port", master_port, "--master-port", master_port]
    completed = subprocess.run(
        argv,
        capture_output=True,
        text=True,
        env=_env(
            WALLETGATE_CONFIG=str(config),
            WALLETGATE_BENCH_BAD_SIGN_RATE="0.2",
            WALLETGATE_BENCH_DUP_RATE="0.2",
            WALLETGATE_BENCH_PLAYERS="4",
        ),
        cwd=REPO,
        timeout=80,
        check=False,
    )
    output = completed.stdout[-4000:] + completed.stderr[-4000:]
    stats_path = Path(f"{prefix}_stats.csv")
    assert stats_path.exists(), output
    with stats_path.open(newline="") as handle:
        rows = {row["Name"]: row for row in csv.DictReader(handle)}
    with Path(f"{prefix}_failures.csv").open(newline="") as handle:
        failures = list(csv.DictReader(handle))
    assert not failures, failures
    assert completed.returncode == 0, output
    total = rows["Aggregated"]
    assert int(total["Request Count"]) > 50, output
    assert int(total["Failure Count"]) == 0
    for family in ("minigame", "wallet_v2", "midas", "transfer"):
        assert any(name.startswith(family) for name in rows), (family, sorted(rows))
    bad_sign = [row for name, row in rows.items() if name.startswith("[bad sign]")]
    assert sum(int(row["Request Count"]) for row in bad_sign) > 0, sorted(rows)
    assert any(name.startswith("[retry]") for name in rows), sorted(rows)


@pytest.mark.timeout(180)
@pytest.mark.parametrize(
    ("script", "figure"),
    [("native_micro.py", "ratio"), ("ledger_micro.py", "ops/s"), ("journal_micro.py", "speed-up")],
)
def test_micro_benchmarks_quick(script: str, figure: str) -> None:
    """Each micro-benchmark runs its ``--quick`` mode to the end and prints its figures."""
    output = _bench(script, "--quick", timeout_s=170)
    assert figure in output, output[-3000:]


@pytest.mark.timeout(180)
def test_script_cost_quick() -> None:
    """The Redis-side cost benchmark measures real bets: each one runs the journal's XADD and
    the tx record's HSET inside its EVALSHA, and costs Redis more than an empty script call."""
    output = _bench("script_cost.py", "--quick", "--aof", "off", timeout_s=170)
    rows = {
        line[:28].strip(): [float(cell) for cell in line[28:].split()]
        for line in output.splitlines()
        if line.startswith("AOF ")
    }
    bet, empty = rows["AOF off change_balance bet"], rows["AOF off empty"]
    # Columns: server µs, EVALSHA µs, nested µs, Lua+glue µs.
    assert bet[0] > empty[0] > 0, output
    assert bet[2] > 0 and empty[2] == 0, output
    nested = output.split("nested commands of one bet")[1]
    assert "xadd" in nested and "hset" in nested, output
