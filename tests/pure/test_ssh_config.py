"""How a node's SSH settings are resolved without fabric (launcher/transport/ssh_client.py): the inventory's
values first, then the host's entry in ~/.ssh/config, then /etc/ssh/ssh_config, then the local user and port
22; what cannot be read is refused with the file's name. (Connecting through them, a ProxyJump from
~/.ssh/config included, is tests/testbed/test_jump_testbed.py's; invoke left out, and loaded for a `Match exec`
that is then honoured, tests/pure/test_imports.py's, in fresh processes.)"""

from __future__ import annotations

import getpass
from pathlib import Path

import pytest

from launcher.transport import ssh_client
from launcher.transport.ssh_client import Client, host_config


@pytest.fixture
def files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, Path]:
    user, system = tmp_path / "user-config", tmp_path / "system-config"
    monkeypatch.setattr(ssh_client, "SSH_CONFIG_FILES", (str(user), str(system)))
    return user, system


def test_the_users_entry_wins_over_the_systems_and_explicit_values_over_both(files) -> None:
    user, system = files
    user.write_text("Host gpu*\n    HostName 10.1.0.7\n    User ops\n    Port 2222\n    IdentityFile ~/.ssh/gpu\n")
    system.write_text("Host *\n    User nobody\n    Port 22\n    IdentityFile /etc/ssh/fleet\n")
    entry = host_config("gpu3")
    resolved = Client("gpu3", None, None, None, entry)
    assert (resolved.host, resolved.user, resolved.port) == ("10.1.0.7", "ops", 2222)
    assert [Path(k).name for k in resolved.keys] == ["gpu", "fleet"]  # OpenSSH tries each, in this order
    given = Client("gpu3", "root", 22, "/keys/inventory", entry)
    assert (given.user, given.port, given.keys[0]) == ("root", 22, "/keys/inventory")
    other = Client("10.9.9.9", None, None, None, host_config("10.9.9.9"))
    assert (other.host, other.user, other.port) == ("10.9.9.9", "nobody", 22)


def test_no_file_at_all_is_the_local_user_on_port_22(files) -> None:
    plain = Client("10.0.0.1", None, None, None, host_config("10.0.0.1"))
    assert (plain.host, plain.user, plain.port, plain.keys) == ("10.0.0.1", getpass.getuser(), 22, [])
    assert plain.jump is None and plain.proxy_command is None


def test_proxyjump_and_proxycommand_none_are_no_hop(files) -> None:
    user, _ = files
    user.write_text(
        "Host a\n    ProxyJump none\nHost b\n    ProxyJump ops@bastion:2200\nHost c\n    ProxyCommand nc %h %p\n"
    )
    assert Client("a", None, None, None, host_config("a")).jump is None
    assert Client("b", None, None, None, host_config("b")).jump == "ops@bastion:2200"
    assert Client("c", None, None, None, host_config("c")).proxy_command == "nc c 22"  # tokens expanded


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("Host x\n    Port ssh\n", "Port 'ssh' for x is not a TCP port"),
        ("Host x\n    Port 70000\n", "Port '70000' for x is not a TCP port"),
    ],
)
def test_a_bad_port_is_named(files, text: str, says: str) -> None:
    files[0].write_text(text)
    with pytest.raises(ValueError, match=says):
        Client("x", None, None, None, host_config("x"))


def test_an_unreadable_file_is_named_by_its_own_path(files) -> None:
    user, system = files
    system.write_text("Host x\n    ProxyCommand\n")  # no value: paramiko cannot parse it
    with pytest.raises(ValueError) as refused:
        host_config("x")
    assert str(refused.value).startswith(f"{system}: "), refused.value  # not the missing user file's name


def test_a_file_over_the_limit_is_refused_not_read_in_part(files, monkeypatch: pytest.MonkeyPatch) -> None:
    user, _ = files
    monkeypatch.setattr(ssh_client, "CONFIG_LIMIT", 64)
    user.write_text("Host x\n    HostName 10.0.0.1" + "0" * 64 + "\n")
    with pytest.raises(ValueError, match="larger than"):
        host_config("x")
