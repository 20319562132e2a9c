"""Exit codes and messages of the CLI itself (local node: no servers)."""

from __future__ import annotations

import json

from tests.helpers import CONFIGS, free_port, loopback_inventory, run_cli, write

LOCAL = str(CONFIGS / "local.yaml")


def test_exec_exit_code_is_the_worst_one(capsys):
    code, out, err = run_cli(["exec", "-c", LOCAL, "--all", "--", "sh", "-c", "echo hi; exit 3"], capsys)
    assert code == 3
    assert "== node 0 (local 127.0.0.1)" in out and "hi" in out and "(exit 3)" in out


def test_exec_of_a_command_killed_by_a_signal_is_a_failure(capsys):
    # The shell itself is killed: no exit status at all, which must not read as success.
    code, out, err = run_cli(["exec", "-c", LOCAL, "--all", "--", "echo [bold]x[/]; kill -9 $$"], capsys)
    assert code == 137 and "(killed by signal 9, exit 137)" in out
    assert "[bold]x[/]" in out  # output is shown as it is, never read as markup


def test_exec_needs_exactly_one_target(capsys):
    code, out, err = run_cli(["exec", "-c", LOCAL, "--", "true"], capsys)
    assert code == 2 and "choose exactly one of --node I, --role R or --all" in err


def test_status_of_a_stopped_deployment_exits_1(capsys, tmp_path, monkeypatch):
    """Status names every service as missing, and the endpoint as not ready, in JSON and in the `not ok:` line."""
    port = free_port()  # nothing listens there
    monkeypatch.setenv("LAUNCHER_PORT", str(port))
    # configs/local.yaml with its state in an empty directory: nothing of it runs
    text = (CONFIGS / "local.yaml").read_text().replace("${CONFIG_DIR}", str(CONFIGS))
    stopped = write(tmp_path, text.replace(f"{CONFIGS}/../.launcher/state", str(tmp_path / "state")))
    services = ["etcd", "nats", "frontend", "prefill-r0", "decode-r0"]
    problems = [f"{name} on node 0: missing" for name in services] + [f"endpoint http://127.0.0.1:{port} not ready"]

    code, out, err = run_cli(["status", str(stopped), "--json"], capsys)
    data = json.loads(out)
    assert code == 1 and data["ok"] is False
    assert [(s["service"], s["state"], s["uptime_s"]) for s in data["services"]] == [
        (name, "missing", None) for name in services
    ]
    assert data["problems"] == problems and data["frontend"]["ready"] is False

    code, out, err = run_cli(["status", str(stopped)], capsys)
    assert code == 1
    rows = [line.split() for line in out.splitlines() if line.startswith("0 local ")]
    assert [(row[3], row[6]) for row in rows] == [(name, "missing") for name in services], out
    assert "workers registered: prefill 0/1, backend 0/1" in out
    assert out.splitlines()[-1] == "not ok: " + "; ".join(problems), out


def test_logs_since_on_the_process_runtime_is_refused(capsys):
    # Process logs have no timestamps: printing everything would look like a filtered answer.
    code, out, err = run_cli(["logs", "-c", LOCAL, "--role", "decode", "--since", "10m"], capsys)
    assert code == 2 and err.startswith("error: --since needs the docker runtime"), err


def test_logs_needs_a_selection(capsys):
    code, out, err = run_cli(["logs", "-c", LOCAL], capsys)
    assert code == 2 and "--node I, or --role R" in err


def test_unknown_node(capsys):
    code, out, err = run_cli(["logs", "-c", LOCAL, "--node", "7"], capsys)
    assert code == 2 and "no node '7'" in err


def test_no_config_anywhere(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("LAUNCHER_CONFIG", raising=False)
    code, out, err = run_cli(["status"], capsys)
    assert code == 2 and "no deployment given" in err


def test_logs_rank_and_tail_are_never_negative(capsys):
    # Refused on the command line, before any node is asked (a negative rank matched nothing, after
    # listing every node, and said "no container matches" with exit 1).
    for option, value in (("--rank", "-1"), ("--tail", "-5")):
        code, out, err = run_cli(["logs", "-c", LOCAL, "--role", "decode", option, value], capsys)
        assert code == 2 and err.count("\n") == 1, err
        assert err.startswith(f"error: {option}: input should be greater than or equal to 0, got '{value}'"), err


def test_logs_role_and_rank_must_be_in_the_plan(capsys):
    # Checked against the deployment file before any node is asked, as `exec --role` and `--node` are.
    code, out, err = run_cli(["logs", "-c", LOCAL, "--role", "nope"], capsys)
    assert code == 2 and err.count("\n") == 1, err
    assert err.startswith("error: --role: no service has role or group 'nope': expected one of "), err
    assert "decode" in err and "etcd" in err
    code, out, err = run_cli(["logs", "-c", LOCAL, "--role", "decode", "--rank", "1"], capsys)
    assert code == 2 and err.strip() == "error: --rank: no rank 1 of decode: expected 0", err
    code, out, err = run_cli(["exec", "-c", LOCAL, "--role", "nope", "--", "true"], capsys)
    assert code == 2 and err.startswith("error: --role: no service has role or group 'nope': expected one of "), err


def test_logs_since_must_be_a_time_or_a_duration(capsys, tmp_path):
    # Checked before any node is asked (docker on every node refused it, exit 1). The loopback
    # inventory (SSH port 1) keeps the shipped file's addresses out of reach whatever happens.
    inventory = loopback_inventory(tmp_path / "inventory.yaml")
    dsr1 = str(CONFIGS / "dsr1-104gpu.yaml")
    for since in ("nope", "10 minutes", "2026-11-24 at ten", "-"):
        code, out, err = run_cli(
            ["logs", "-c", dsr1, "-i", str(inventory), "--role", "decode", "--since", since], capsys
        )
        assert code == 2 and err.count("\n") == 1, err
        assert err.startswith("error: --since: expected a duration (10m, 1h30m), a date or time"), err
        assert f"got {since!r}" in err
    # What docker takes passes this check (here it then meets the process runtime's refusal).
    for since in ("10m", "1h30m", "1.5h", "2026-11-24", "2026-11-24T10:00", "2026-11-24T10:00:00.5Z", "1700000000"):
        code, out, err = run_cli(["logs", "-c", LOCAL, "--role", "decode", "--since", since], capsys)
        assert code == 2 and err.startswith("error: --since needs the docker runtime"), (since, err)
