"""README promises that are pure code, each pinned by a test that fails when the behaviour breaks.

No servers: the doctor's reading of node output, the transport's error kinds (built from the exception
objects paramiko and socket really raise), and what the deployment file means (secrets, defaults,
merges, GPU sharing, ports, variables). The README sentence each test pins is quoted in its docstring.
"""

from __future__ import annotations

import socket
import subprocess
import time

import paramiko
import pytest

from launcher.config.load import load as load_config
from launcher.config.schema import SSHSettings
from launcher.operations import preflight
from launcher.plan.build import build as build_plan
from launcher.plan.types import Node
from launcher.runtime import docker
from launcher.transport import errors as transport
from launcher.transport import host as transport_host
from launcher.transport.host import Options
from launcher.transport.ssh import SSHHost as Host
from tests.helpers import CONFIGS, MINIMAL, run_cli, write

# -- doctor: GPUs, InfiniBand, /dev/shm, disk, clock skew -------------------------------------------


def dsr1():
    return build_plan(load_config(CONFIGS / "dsr1-104gpu.yaml", environ={}))


def checks_of(p, i: int, *lines: str, midpoint: float | None = None) -> dict[str, preflight.Check]:
    out = "\n".join(lines) + "\n"
    return {c.name: c for c in preflight.from_output(p, i, out, time.time() if midpoint is None else midpoint)}


def test_doctor_gpu_count_below_what_the_plan_needs_fails():
    """README (doctor): "GPU runtime and GPU count/model"."""
    p = dsr1()
    assert max(len(g.gpus) for g in p.groups if 0 in g.node_indices) == 8
    few = checks_of(p, 0, "@@check gpus ok 4xNVIDIA H100 80GB HBM3")["gpus"]
    assert (few.status, few.detail) == ("fail", "4 GPU(s), the plan needs 8") and few.fix == preflight.FIXES["gpus"]
    enough = checks_of(p, 0, "@@check gpus ok 8xNVIDIA H100 80GB HBM3")["gpus"]
    assert enough.status == "ok" and enough.fix == ""
    broken = checks_of(p, 0, "@@check gpus fail NVIDIA-SMI has failed because it couldn't communicate")["gpus"]
    assert broken.status == "fail" and broken.fix == preflight.FIXES["gpus"]
    runtime = checks_of(p, 0, "@@check gpu-runtime fail ")["gpu-runtime"]
    assert runtime.status == "fail" and "nvidia-ctk" in runtime.fix


def test_doctor_a_node_with_another_gpu_model_fails_alone():
    checks = [
        c
        for i in range(4)
        for c in preflight.from_output(
            dsr1(), i, f"@@check gpus ok 8xNVIDIA {'A100-SXM4-80GB' if i == 2 else 'H100 80GB HBM3'}\n", time.time()
        )
    ]
    preflight.compare_nodes(checks)
    assert [(c.node, c.status) for c in checks] == [(0, "ok"), (1, "ok"), (2, "fail"), (3, "ok")]
    assert checks[2].detail.startswith("GPU models differ between nodes: 8xNVIDIA A100-SXM4-80GB")
    assert "(most nodes: NVIDIA H100 80GB HBM3)" in checks[2].detail


def test_doctor_infiniband_devices_named_in_the_file_are_checked_on_each_node(tmp_path):
    """README (doctor): "InfiniBand devices named in the file"; the node script looks for each one."""
    text = MINIMAL.replace("  - {address: 10.9.0.1}", "  - {address: 10.9.0.1, ib_devices: [mlx5_0, mlx5_9]}")
    p = build_plan(load_config(write(tmp_path, text), environ={}))
    script = preflight.node_script(p, docker.Docker(), 0, running=set())
    assert "/sys/class/infiniband/mlx5_0" in script and "/sys/class/infiniband/mlx5_9" in script
    assert "/sys/class/infiniband" not in preflight.node_script(p, docker.Docker(), 1, running=set())
    seen = [c for c in preflight.from_output(p, 0, "@@check ib ok mlx5_0\n@@check ib fail mlx5_9\n", 0.0)]
    assert [(c.status, c.detail) for c in seen] == [("ok", "mlx5_0"), ("fail", "mlx5_9")]
    assert seen[1].fix == preflight.FIXES["ib"] and seen[0].fix == ""


def test_doctor_dev_shm_disk_and_clock_thresholds():
    """README (doctor): "`/dev/shm`, free disk, ... clock skew"."""
    p, mid = dsr1(), 1_000_000.0
    small = checks_of(p, 0, f"@@check shm ok {512 * 1024}", midpoint=mid)["shm"]
    assert (small.status, small.detail) == ("warn", "/dev/shm free 512 MiB") and "/dev/shm" in small.fix
    assert checks_of(p, 0, f"@@check shm ok {64 * 1024 * 1024}")["shm"].status == "ok"
    full = checks_of(p, 0, f"@@check disk ok {5 * 1024 * 1024}")["disk"]
    assert (full.status, full.detail) == ("warn", "/ free 5 GiB") and full.fix
    assert checks_of(p, 0, f"@@check disk ok {200 * 1024 * 1024}")["disk"].status == "ok"
    ahead = checks_of(p, 0, f"@@check clock ok {mid + 5.25}", midpoint=mid)["clock"]
    assert (ahead.status, ahead.detail) == ("warn", "skew +5.25s against this machine") and "chrony" in ahead.fix
    behind = checks_of(p, 0, f"@@check clock ok {mid - 3}", midpoint=mid)["clock"]
    assert behind.status == "warn" and "-3.00s" in behind.detail
    close = checks_of(p, 0, f"@@check clock ok {mid + 0.4}", midpoint=mid)["clock"]
    assert close.status == "ok" and close.fix == ""
    assert checks_of(p, 0, "@@check clock ok date:", midpoint=mid)["clock"].status == "warn"


def test_doctor_node_script_output_on_this_machine_reads_back(tmp_path):
    """The real node script, run by bash here: every promised check comes back and reads as the machine is."""
    text = MINIMAL.replace("  - {address: 10.9.0.1}", "  - {address: 10.9.0.1, ib_devices: [launcher_no_such_hca]}")
    p = build_plan(load_config(write(tmp_path, text), environ={}))
    sent = time.time()
    out = subprocess.run(
        ["bash", "-c", preflight.node_script(p, docker.Docker(), 0, running=set())],
        capture_output=True,
        text=True,
        timeout=120,
    ).stdout
    checks = {c.name: c for c in preflight.from_output(p, 0, out, (sent + time.time()) / 2)}
    assert {"clock", "runtime", "gpu-runtime", "gpus", "ib", "shm", "disk", "image", "port"} <= set(checks), out
    assert checks["ib"].status == "fail" and checks["ib"].detail == "launcher_no_such_hca"
    assert checks["clock"].status == "ok", checks["clock"]  # this machine against itself
    free = subprocess.run(["df", "-Pk", "/"], capture_output=True, text=True).stdout.splitlines()[1].split()[3]
    assert checks["disk"].detail == f"/ free {int(free) // 1024 // 1024} GiB"
    shm = subprocess.run(["df", "-Pk", "/dev/shm"], capture_output=True, text=True).stdout.splitlines()[1].split()[3]
    assert checks["shm"].detail == f"/dev/shm free {int(shm) // 1024} MiB"


# -- the transport's error kinds --------------------------------------------------------------------


def two_keys() -> tuple[paramiko.PKey, paramiko.PKey]:
    return paramiko.ECDSAKey.generate(), paramiko.ECDSAKey.generate()


def refused_for_real() -> BaseException:
    """What paramiko raises when nothing listens on the SSH port (a closed local port)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # bound, never listening: connecting is refused
        client = paramiko.SSHClient()
        try:
            client.connect("127.0.0.1", port=port, timeout=5)
        except Exception as exc:
            return exc
    raise AssertionError("connecting to a closed port did not fail")


def unknown_host_for_real() -> BaseException:
    """What RejectPolicy (the strict policy) raises for a host missing from known_hosts."""
    client = paramiko.SSHClient()
    client._log = lambda *args: None  # the policy logs through the client's transport, absent here
    try:
        paramiko.RejectPolicy().missing_host_key(client, "10.9.0.7", two_keys()[0])
    except Exception as exc:
        return exc
    raise AssertionError("RejectPolicy accepted an unknown host")


def test_transport_tells_every_connection_failure_apart():
    """README: "a changed key, an unknown host, a refused connection, a timeout, an unresolved name and a
    refused login are told apart in the error, and so is a node that is off (`unreachable`: no route)"."""
    got, expected = two_keys()
    no_route = OSError(113, "No route to host")
    cases = {
        "host key changed": paramiko.BadHostKeyException("10.9.0.7", got, expected),
        "host key unknown": unknown_host_for_real(),
        "connection refused": refused_for_real(),
        "timed out": TimeoutError("timed out"),  # socket.timeout is TimeoutError
        "name not resolved": socket.gaierror(socket.EAI_NONAME, "Name or service not known"),
        "auth refused": paramiko.AuthenticationException("Authentication failed."),
        # paramiko collects EHOSTUNREACH per address; ENETUNREACH comes straight from connect()
        "unreachable": paramiko.ssh_exception.NoValidConnectionsError({("10.9.0.7", 22): no_route}),
    }
    kinds = {}
    for want, exc in cases.items():
        kind, detail = transport.classify(exc)
        kinds[want] = kind
        assert kind == want, (want, type(exc).__name__, exc, kind, detail)
        assert detail  # something to say besides the kind
    assert len(set(kinds.values())) == len(cases)
    assert transport.classify(OSError(101, "Network is unreachable"))[0] == "unreachable"
    assert "ssh-keygen -R" in transport.classify(cases["host key changed"])[1]
    assert "--host-key-policy accept-new" in transport.classify(cases["host key unknown"])[1]
    # and each kind gets its own fix in the doctor's table
    assert len({preflight._ssh_fix(k) for k in kinds.values()}) == len(cases)


def test_a_refused_connection_is_reported_per_node_with_its_kind():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
        # not LocalHost: a node reached over SSH, here at a loopback alias the launcher does not treat as local
        node = Node(0, "n0", "127.0.0.2", SSHSettings(port=port, connect_timeout=5), 0)
        host = Host(node, Options())
        with pytest.raises(transport.NodeError) as failed:
            host.connect()
    assert failed.value.kind == "connection refused" and str(failed.value).startswith("node 0 (n0 127.0.0.2)")


# -- command-line SSH options over the files' `ssh:` (node, then file, then inventory) -------------


def test_ssh_settings_precedence_node_file_inventory_then_command_line(tmp_path):
    """README: "given on the command line they win over the files' `ssh:` settings (node, then inventory),
    else 10 s and `strict`"; "The inventory's ... `ssh` settings are defaults under the file's"."""
    from launcher.operations.context import Connection, Target, connected
    from launcher.runtime import for_plan

    inv = write(
        tmp_path,
        "ssh: {user: inv-user, port: 2200, connect_timeout: 7, host_key_policy: accept-new}\n"
        "nodes:\n  - {name: a, address: 10.9.0.1}\n  - {name: b, address: 10.9.0.2, ssh: {connect_timeout: 3}}\n",
        "inventory.yaml",
    )
    body = MINIMAL.split("nodes:")[0] + "ssh: {user: file-user}\n" + MINIMAL[MINIMAL.index("groups:") :]
    body = body.replace("nodes: 2\n    args: {tp-size: 16, dp-size: 16, enable-dp-attention: true}", "nodes: [a]")
    body = body.replace("nodes: 2\n    args: {tp-size: 16}", "nodes: [b]")
    p = build_plan(load_config(write(tmp_path, body), inv, environ={}))
    a, b = p.nodes
    assert (a.ssh.user, a.ssh.port, a.ssh.connect_timeout) == ("file-user", 2200, 7)  # file over inventory
    assert b.ssh.connect_timeout == 3  # the node's own over both
    with connected(Target(tmp_path, None, p, for_plan(p)), Connection(parallel=4)) as t:
        assert [t.fleet.host(i).connect_timeout for i in (0, 1)] == [7, 3]
    link = Connection(parallel=4, connect_timeout=1.5, host_key_policy="strict")
    with connected(Target(tmp_path, None, p, for_plan(p)), link) as t:
        assert [t.fleet.host(i).connect_timeout for i in (0, 1)] == [1.5, 1.5]
        assert t.fleet.options.host_key_policy == "strict"
    bare = Node(0, "c", "10.9.0.3", SSHSettings(), 0)
    assert Host(bare, Options()).connect_timeout == transport_host.DEFAULT_CONNECT_TIMEOUT == 10


# -- secrets -----------------------------------------------------------------------------------------

PLAIN = "pl41n-but-s3cret"


@pytest.mark.parametrize(
    "name",
    ["DB_PASSWORD", "WANDB_API_KEY", "GITHUB_TOKEN", "SIGNING_SECRET", "OPENAI_KEY", "DB_PASSWD", "GCP_CREDENTIALS",
     "PROXY_AUTH", "api_token"],
)  # fmt: skip
def test_a_secret_looking_env_name_is_a_secret_without_being_listed(tmp_path, capsys, name):
    """README: "any env variable whose name looks secret (its last word TOKEN, KEY, SECRET, PASSWORD, PASSWD,
    CREDENTIALS, AUTH...)"
    is handled as a secret: env file, never the command line or the plan (`***`)."""
    decode = "    args: {tp-size: 16}\n"
    path = write(tmp_path, MINIMAL.replace(decode, decode + f"    env: {{{name}: {PLAIN}, VISIBLE: shown}}\n"))
    p = build_plan(load_config(path, environ={}))
    worker = next(s for s in p.services if s.group == "decode")
    assert worker.secret_env == {name: PLAIN} and name not in worker.env and worker.env["VISIBLE"] == "shown"
    assert not any(PLAIN in a for a in docker.docker_run(p, worker))
    for fmt in ("text", "json", "script"):
        code, out, err = run_cli(["plan", str(path), "-f", fmt, "-v"], capsys)
        assert code == 0 and PLAIN not in out + err and name in out, err


@pytest.mark.parametrize(
    "where, key",
    [
        ("    container: {volumes: ['/srv/${MY_API_KEY}:/data:ro']}\n", "groups.decode"),
        ("    image: 'registry/${MY_API_KEY}:1'\n", "groups.decode"),
    ],
)
def test_a_secret_in_volumes_or_the_image_is_refused(tmp_path, capsys, where, key):
    """README: "in engine args, `run_options`, volumes or the image it is refused (exit 2)"."""
    secret = "s3cr3t-v4lue"
    path = write(tmp_path, MINIMAL.replace("    args: {tp-size: 16}\n", "    args: {tp-size: 16}\n" + where))
    (tmp_path / ".env").write_text(f"MY_API_KEY={secret}\n")
    code, out, err = run_cli(["plan", str(path)], capsys)
    assert code == 2 and "Traceback" not in err and secret not in out + err
    assert err.startswith(f"error: {path}: {key}: the value of secret MY_API_KEY would be on the command line"), err


@pytest.mark.parametrize(
    "top, key",
    [
        ("image: 'registry/${MY_API_KEY}:1'\n", "image"),
        ("image: example/image:1\ncontainer: {volumes: ['/srv/${MY_API_KEY}:/data:ro']}\n", "container.volumes"),
    ],
)
def test_a_secret_at_the_top_of_the_file_is_named_there(tmp_path, capsys, top, key):
    """Every service inherits the top-level image and container: the error names that key, not etcd."""
    path = write(tmp_path, MINIMAL.replace("image: example/image:1\n", top))
    (tmp_path / ".env").write_text("MY_API_KEY=s3cr3t-v4lue\n")
    code, out, err = run_cli(["plan", str(path)], capsys)
    assert code == 2 and "s3cr3t-v4lue" not in out + err
    assert err.startswith(f"error: {path}: {key}: the value of secret MY_API_KEY would be on the command line"), err


# -- container defaults, merges, GPU sharing, ports ----------------------------------------------


def docker_argv(tmp_path, text: str, group: str = "decode") -> list[str]:
    p = build_plan(load_config(write(tmp_path, text), environ={}))
    return docker.docker_run(p, next(s for s in p.services if s.group == group))


def flag_values(argv: list[str], flag: str) -> list[str]:
    return [argv[i + 1] for i, a in enumerate(argv) if a == flag]


def test_empty_string_and_null_drop_defaults(tmp_path):
    """README (container): "`""` drops a default value, `null` drops a default ulimit"."""
    default = docker_argv(tmp_path, MINIMAL)
    assert flag_values(default, "--shm-size") == ["10g"] and flag_values(default, "--ipc") == ["host"]
    assert flag_values(default, "--ulimit") == ["memlock=-1", "stack=67108864", "nofile=65536:65536"]
    text = MINIMAL + "container: {shm_size: '', ipc: '', ulimits: {memlock: null, nofile: null}}\n"
    dropped = docker_argv(tmp_path, text)
    assert "--shm-size" not in dropped and "--ipc" not in dropped
    assert flag_values(dropped, "--ulimit") == ["stack=67108864"]  # the one not dropped stays
    # the same, per group
    decode = "    args: {tp-size: 16}\n"
    per_group = MINIMAL.replace(decode, decode + "    container: {shm_size: '', ulimits: {stack: null}}\n")
    assert "--shm-size" not in docker_argv(tmp_path, per_group)
    assert flag_values(docker_argv(tmp_path, per_group, "prefill"), "--shm-size") == ["10g"]
    assert flag_values(docker_argv(tmp_path, per_group), "--ulimit") == ["memlock=-1", "nofile=65536:65536"]


def test_group_overrides_merge_mappings_append_lists_replace_scalars(tmp_path):
    """README: "`groups.NAME.env`, `.image`, `.container`: per-group overrides (mappings merge, lists
    append, scalars replace)"."""
    text = MINIMAL + (
        "container:\n"
        "  shm_size: 20g\n"
        "  volumes: [/models:/models:ro]\n"
        "  env: {SHARED: top, OVERRIDDEN: top}\n"
        "  ulimits: {core: 0}\n"
    )
    decode = "    args: {tp-size: 16}\n"
    text = text.replace(
        decode,
        decode + "    image: other/image:2\n"
        "    env: {OVERRIDDEN: group, OWN: 'yes'}\n"
        "    container: {shm_size: 32g, volumes: [/scratch:/scratch], ulimits: {nofile: 1024}}\n",
    )
    p = build_plan(load_config(write(tmp_path, text), environ={}))
    decode_s = next(s for s in p.services if s.group == "decode")
    prefill_s = next(s for s in p.services if s.group == "prefill")
    argv = docker.docker_run(p, decode_s)
    assert decode_s.image == "other/image:2" and prefill_s.image == "example/image:1"  # scalar replaced
    assert flag_values(argv, "--shm-size") == ["32g"]  # scalar replaced
    assert flag_values(argv, "-v")[:2] == ["/models:/models:ro", "/scratch:/scratch"]  # list appended
    assert flag_values(argv, "--ulimit") == ["memlock=-1", "stack=67108864", "nofile=1024", "core=0"]  # merged
    env = {k: decode_s.env[k] for k in ("SHARED", "OVERRIDDEN", "OWN")}
    assert env == {"SHARED": "top", "OVERRIDDEN": "group", "OWN": "yes"}  # mappings merged
    assert prefill_s.env["OVERRIDDEN"] == "top" and "OWN" not in prefill_s.env
    assert flag_values(docker.docker_run(p, prefill_s), "-v") == ["/models:/models:ro"]


TWO_GROUPS_ONE_NODE = """\
deployment: share
image: example/image:1
gpus_per_node: 8
nodes:
  - {address: 10.9.0.1}
groups:
  prefill: {engine: dynamo-sglang, nodes: [0], gpus: PREFILL}
  decode: {engine: dynamo-sglang, nodes: [0], gpus: DECODE}
"""


def test_two_gpu_groups_share_a_node_only_with_disjoint_gpus(tmp_path, capsys):
    """README: "two GPU groups may share a node only with disjoint `gpus`"."""
    ok = TWO_GROUPS_ONE_NODE.replace("PREFILL", "[0, 1, 2, 3]").replace("DECODE", "[4, 5, 6, 7]")
    p = build_plan(load_config(write(tmp_path, ok), environ={}))
    assert sorted(tuple(g.gpus) for g in p.groups) == [(0, 1, 2, 3), (4, 5, 6, 7)]
    bad = TWO_GROUPS_ONE_NODE.replace("PREFILL", "[0, 1, 2, 3]").replace("DECODE", "[3, 4, 5, 6]")
    path = write(tmp_path, bad, "overlap.yaml")
    code, out, err = run_cli(["plan", str(path)], capsys)
    assert code == 2 and "Traceback" not in err, err
    assert err.startswith(f"error: {path}") and "groups.decode.nodes" in err and "disjoint `gpus`" in err, err
    unset = TWO_GROUPS_ONE_NODE.replace(", gpus: PREFILL", "").replace(", gpus: DECODE", "")
    code, out, err = run_cli(["plan", str(write(tmp_path, unset, "all.yaml"))], capsys)
    assert code == 2 and "disjoint `gpus`" in err, err


@pytest.mark.parametrize("port, ok", [(32767, True), (32768, False), (65535, False)])
def test_system_port_is_at_most_32767(tmp_path, capsys, port, ok):
    """README: "`system_port` ... at most 32767, Dynamo keeps it in 16 bits"."""
    decode = "    args: {tp-size: 16}\n"
    path = write(tmp_path, MINIMAL.replace(decode, decode + f"    system_port: {port}\n"))
    code, out, err = run_cli(["plan", str(path)], capsys)
    if ok:
        assert code == 0, err
        return
    assert code == 2 and "Traceback" not in err
    assert err.startswith(f"error: {path}:") and "groups.decode.system_port" in err and "32767" in err, err
    assert str(port) in err


# -- variables ---------------------------------------------------------------------------------------


def test_double_dollar_is_a_literal_dollar(tmp_path):
    """README: "`$$` is a literal `$`" — and what follows it is not read as a variable."""
    decode = "    args: {tp-size: 16}\n"
    text = MINIMAL.replace(decode, decode + "    env: {PRICE: '$$5', LITERAL: '$${HOME}', BOTH: '$$$${X:-a}'}\n")
    p = build_plan(load_config(write(tmp_path, text), environ={"HOME": "/root", "X": "b"}))
    env = next(s for s in p.services if s.group == "decode").env
    assert (env["PRICE"], env["LITERAL"], env["BOTH"]) == ("$5", "${HOME}", "$${X:-a}")


def test_dotenv_wins_over_the_inventorys_vars_and_the_environment_over_both(tmp_path):
    """README: "looked up in the environment, then in `.env` beside the deployment file, then in the
    inventory's `vars`"."""
    inv = write(tmp_path, "vars: {IMG: from-inventory:1, ONLY_INV: inv}\nnodes:\n  - {address: 10.9.0.1}\n", "inv.yaml")
    text = (
        "deployment: vars\nimage: ${IMG}\ngpus_per_node: 0\n"
        "groups:\n  work: {engine: command, nodes: 1, args: [run, '${ONLY_INV}'], env: {A: '${ONLY_ENV:-unset}'}}\n"
    )
    path = write(tmp_path, text)
    assert build_plan(load_config(path, inv, environ={})).services[0].image == "from-inventory:1"
    (tmp_path / ".env").write_text("IMG=from-dotenv:2\nONLY_ENV=dotenv\n")
    p = build_plan(load_config(path, inv, environ={}))
    assert p.services[-1].image == "from-dotenv:2" and p.services[-1].command == ["run", "inv"]
    assert p.services[-1].env["A"] == "dotenv"
    assert build_plan(load_config(path, inv, environ={"IMG": "from-env:3"})).services[0].image == "from-env:3"


# -- a second Ctrl-C during up's start phase -----------------------------------------------------------


def test_a_second_ctrl_c_leaves_at_once_and_still_says_what_had_not_answered():
    """README (up): "start scripts already sent get up to 20 s to finish (a second Ctrl-C leaves at once),
    then it lists what it started and left running, names nodes that had not answered"."""
    import signal
    import sys
    import threading

    from launcher.transport.fleet import Fleet, MapInterrupted

    main = threading.main_thread()
    nodes = [Node(i, f"n{i}", "127.0.0.1", SSHSettings(), 0) for i in range(2)]
    hanging, release = threading.Event(), threading.Event()

    def start(host):
        if host.node.index == 1:  # a node whose start script does not answer
            hanging.set()
            release.wait(60)
        return host.node.index

    def in_grace_wait() -> bool:
        frame = sys._current_frames().get(main.ident)
        while frame is not None:
            if frame.f_code.co_name == "wait" and "concurrent" in frame.f_code.co_filename:
                return True
            frame = frame.f_back
        return False

    def press_ctrl_c_twice() -> None:
        hanging.wait(30)
        signal.pthread_kill(main.ident, signal.SIGINT)
        for _ in range(3000):  # the first Ctrl-C has put the map in its grace wait (30 s at most: a loaded CI)
            if in_grace_wait():
                break
            threading.Event().wait(0.01)
        signal.pthread_kill(main.ident, signal.SIGINT)

    presser = threading.Thread(target=press_ctrl_c_twice, daemon=True)
    watchdog = threading.Timer(60, release.set)  # bounds the test if the second Ctrl-C is ignored
    with Fleet(nodes, Options(parallel=2)) as fleet:
        presser.start()
        watchdog.start()
        stopped = None
        try:
            fleet.map(start, finish_on_interrupt=3600)  # a grace far longer than the test may take
        except MapInterrupted as exc:
            stopped = exc
        except KeyboardInterrupt:
            pytest.fail("the second Ctrl-C lost what had finished and which nodes had not answered")
        finally:
            still_hanging = not release.is_set()
            watchdog.cancel()
            release.set()
    assert stopped is not None, "the map was not interrupted"
    assert still_hanging, "the map waited for the hanging node instead of leaving at the second Ctrl-C"
    assert stopped.results == {0: 0} and stopped.pending == [1]
