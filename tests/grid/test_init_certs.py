"""`grid init` makes the grid CA and the node's certificate, `grid user add` a user's bundle,
`grid join-bundle` + `grid init --join` a second node; all as real processes on real homes.
Running init again changes nothing, and nothing ever overwrites the CA."""

from __future__ import annotations

import re
import socket
import stat
from pathlib import Path

import pytest
from cryptography import x509

from grid.init import default_node_name, init_home
from replication import certs
from tests.grid.conftest import run_grid


def snapshot(root: Path) -> dict[str, tuple[int, bytes]]:
    """Every file and directory under *root*: mode and contents."""
    out = {}
    for p in sorted(root.rglob("*")):
        st = p.lstat()
        out[str(p.relative_to(root))] = (
            stat.S_IMODE(st.st_mode),
            p.read_bytes() if p.is_file() else b"",
        )
    return out


def files_modes(d: Path) -> dict[str, int]:
    return {p.name: stat.S_IMODE(p.stat().st_mode) for p in d.iterdir()}


def test_init_creates_the_ca_and_the_node_certificate(tmp_path):
    home = tmp_path / "home"
    out = run_grid(home, "init", "--node-name", "node1", "--host", "node1.example.org")
    text = out.stdout.decode()
    assert "created" in text and "this node holds the CA key" in text and "node node1" in text
    c = home / "certs"
    assert stat.S_IMODE(c.stat().st_mode) == 0o700
    assert files_modes(c / "ca") == {"cert.pem": 0o600, "key.pem": 0o600}
    assert files_modes(c / "node") == {"cert.pem": 0o600, "key.pem": 0o600, "ca.pem": 0o600}
    ca = certs.load_ca(c / "ca")
    assert ca.grid_name == "node1"
    node = certs.load_bundle(c / "node", expect="node")
    assert node.ca_cert == ca.cert
    assert node.identity == ("node", "node1")
    san = node.cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    names = san.get_values_for_type(x509.DNSName)
    assert {"node1", "node1.example.org", "localhost"} <= set(names)


def test_node_name_defaults_to_the_host_name(tmp_path):
    home = tmp_path / "home"
    run_grid(home, "init", "--grid-name", "lab")
    node = certs.load_bundle(home / "certs" / "node")
    assert node.identity == ("node", default_node_name())
    if re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,62}", socket.gethostname()):
        assert default_node_name() == socket.gethostname()
    assert certs.load_ca(home / "certs" / "ca").grid_name == "lab"


def test_init_again_changes_nothing_and_never_overwrites_the_ca(tmp_path):
    home = tmp_path / "home"
    run_grid(home, "init", "--node-name", "node1")
    before = snapshot(home / "certs")
    out = run_grid(home, "init")
    assert "already exists" in out.stdout.decode()
    assert snapshot(home / "certs") == before
    # Asking for another name on a node that has one is an error, and changes nothing.
    p = run_grid(home, "init", "--node-name", "node9", check=False)
    assert p.returncode == 1 and b"this node is 'node1' already" in p.stderr
    assert snapshot(home / "certs") == before
    # In-process too, and with the node's certificate lost: a new one, the same CA.
    init_home(home)
    assert snapshot(home / "certs") == before
    for f in (home / "certs" / "node").iterdir():
        f.unlink()
    (home / "certs" / "node").rmdir()
    init_home(home, node_name="node1")
    after = snapshot(home / "certs")
    assert {k: v for k, v in after.items() if k.startswith("ca")} == {
        k: v for k, v in before.items() if k.startswith("ca")
    }
    assert certs.load_bundle(home / "certs" / "node").identity == ("node", "node1")


def test_bad_options_change_nothing(tmp_path):
    home = tmp_path / "home"
    for args, msg in (
        (("--host", "bad host"), "bad host name"),
        (("--node-name", "a/b"), "bad node name"),
        (("--grid-name", "my grid"), "bad grid name"),
        (("--join", str(tmp_path / "missing")), "No such file"),
    ):
        p = run_grid(home, "init", *args, check=False)
        assert p.returncode == 1, p
        err = p.stderr.decode()
        assert err.startswith("grid: ") and msg in err and "Traceback" not in err, err
        assert not home.exists()
    garbage = tmp_path / "garbage"
    garbage.write_text("hello\n")
    p = run_grid(home, "init", "--join", str(garbage), check=False)
    assert p.returncode == 1 and b"not a grid join bundle" in p.stderr
    assert not home.exists()


def test_user_add_issues_a_bundle(tmp_path):
    home = tmp_path / "home"
    run_grid(home, "init", "--node-name", "node1")
    out = run_grid(home, "user", "add", "bob").stdout.decode()
    bundle = home / "certs" / "users" / "bob"
    assert f"certificate bundle in {bundle}" in out
    assert stat.S_IMODE(bundle.stat().st_mode) == 0o700
    assert files_modes(bundle) == {"cert.pem": 0o600, "key.pem": 0o600, "ca.pem": 0o600}
    creds = certs.load_bundle(bundle, expect="user")
    assert creds.identity == ("user", "bob")
    assert creds.ca_cert == certs.load_ca(home / "certs" / "ca").cert

    # Export: the same bundle, copied; renew: a new key and certificate.
    dest = tmp_path / "bob-cert"
    out = run_grid(home, "user", "cert", "bob", "--out", str(dest)).stdout.decode()
    assert f"certificate bundle of bob in {bundle}" in out and str(dest) in out
    assert certs.load_bundle(dest).cert == creds.cert
    assert files_modes(dest) == {"cert.pem": 0o600, "key.pem": 0o600, "ca.pem": 0o600}
    run_grid(home, "user", "cert", "bob", "--renew", "--out", str(dest))
    renewed = certs.load_bundle(bundle)
    assert renewed.cert != creds.cert and certs.load_bundle(dest).cert == renewed.cert

    p = run_grid(home, "user", "cert", "nobody", check=False)
    assert p.returncode == 1 and b"no user 'nobody'" in p.stderr
    run_grid(home, "user", "rm", "bob")
    assert not bundle.exists()


def test_a_second_node_joins_with_a_bundle(tmp_path):
    first, second = tmp_path / "first", tmp_path / "second"
    run_grid(first, "init", "--node-name", "node1", "--grid-name", "lab")
    bundle = tmp_path / "node2.bundle"
    p = run_grid(first, "join-bundle", "node2", "--host", "node2.example.org", "-o", str(bundle))
    assert b"holds a private key" in p.stderr
    assert stat.S_IMODE(bundle.stat().st_mode) == 0o600
    again = run_grid(first, "join-bundle", "node2", "-o", str(bundle), check=False)
    assert again.returncode == 1 and b"refusing to overwrite" in again.stderr

    out = run_grid(second, "init", "--join", str(bundle)).stdout.decode()
    assert "joined: no CA key here" in out and "node node2" in out
    c = second / "certs"
    assert files_modes(c / "ca") == {"cert.pem": 0o600}  # the CA's certificate, not its key
    assert (c / "ca" / "cert.pem").read_bytes() == (first / "certs/ca/cert.pem").read_bytes()
    assert certs.load_bundle(c / "node").identity == ("node", "node2")
    before = snapshot(c)
    run_grid(second, "init", "--join", str(bundle))
    run_grid(second, "init")
    assert snapshot(c) == before

    # Users are issued on the CA node; the joined node says so.
    out = run_grid(second, "user", "add", "carol").stdout.decode()
    assert "no certificate issued" in out and "no CA key" in out
    assert not (c / "users" / "carol").exists()

    # Stdin works too, and a bundle for another name is refused before anything is made.
    third = tmp_path / "third"
    data = run_grid(first, "join-bundle", "node3", "-o", "-").stdout
    p = run_grid(third, "init", "--join", "-", "--node-name", "other", input=data, check=False)
    assert p.returncode == 1 and b"for node 'node3', not 'other'" in p.stderr
    assert not third.exists()
    run_grid(third, "init", "--join", "-", input=data)
    assert certs.load_bundle(third / "certs" / "node").identity == ("node", "node3")


def test_a_node_of_another_grid_cannot_join(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    run_grid(a, "init", "--node-name", "na")
    run_grid(b, "init", "--node-name", "nb")
    data = run_grid(a, "join-bundle", "nc", "-o", "-").stdout
    before = snapshot(b / "certs")
    p = run_grid(b, "init", "--join", "-", input=data, check=False)
    assert p.returncode == 1 and b"another grid's CA" in p.stderr
    assert snapshot(b / "certs") == before


@pytest.mark.parametrize("cmd", [("init",), ("join-bundle",), ("user", "cert")])
def test_help_has_an_example(cmd, tmp_path):
    out = run_grid(tmp_path, *cmd, "--help").stdout.decode()
    assert "example" in out
