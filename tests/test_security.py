"""Loopback by default, CURVE encryption and subscriber authentication, `forecaster keys`."""

from __future__ import annotations

import logging
import shutil
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import zmq
import zmq.auth

from forecaster.client import CurveClient, Subscriber
from forecaster.config import parse_config
from forecaster.errors import ConfigError
from forecaster.ipc.publisher import CurveServer, Publisher
from forecaster.keys import generate_keypair
from forecaster.protocol import Score
from tests.conftest import free_port
from tests.daemon_harness import Daemon, config_text, daemon_env, wait_for

pytestmark = pytest.mark.timeout(60)


def _cli(args: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "forecaster", *args], cwd=cwd, env=daemon_env(),
        capture_output=True, text=True, timeout=60,
    )


@pytest.fixture
def keys(tmp_path: Path) -> dict[str, Path]:
    """A publisher key pair, an allowed client (alice) and a stranger (mallory)."""
    folder = tmp_path / "keys"
    server = generate_keypair(folder, "server")
    alice = generate_keypair(folder, "alice")
    mallory = generate_keypair(tmp_path / "elsewhere", "mallory")
    allowed = tmp_path / "allowed"
    allowed.mkdir()
    shutil.copy(alice.public, allowed / alice.public.name)
    return {
        "server_secret": server.secret, "server_public": server.public, "allowed": allowed,
        "alice": alice.secret, "mallory": mallory.secret,
    }


def test_keys_command_writes_a_certificate_pair(tmp_path: Path) -> None:
    folder = tmp_path / "k"
    result = _cli(["keys", str(folder), "--name", "alice"], tmp_path)
    assert result.returncode == 0, result.stderr
    public, secret = folder / "alice.key", folder / "alice.key_secret"
    assert stat.S_IMODE(secret.stat().st_mode) == 0o600
    assert stat.S_IMODE(public.stat().st_mode) == 0o644
    key, none = zmq.auth.load_certificate(public)
    key_again, secret_key = zmq.auth.load_certificate(secret)
    assert none is None and key == key_again and len(key) == 40 and len(secret_key or b"") == 40
    # zmq's own authenticator reads the folder
    assert list(zmq.auth.load_certificates(folder)) == [key]
    again = _cli(["keys", str(folder), "--name", "alice"], tmp_path)
    assert again.returncode == 2 and "already exists" in again.stderr
    assert len(again.stderr.strip().splitlines()) == 1, again.stderr
    forced = _cli(["keys", str(folder), "--name", "alice", "--force"], tmp_path)
    assert forced.returncode == 0
    assert zmq.auth.load_certificate(public)[0] != key
    assert stat.S_IMODE(secret.stat().st_mode) == 0o600


def test_keys_force_replaces_a_link_at_the_key_path_not_its_target(tmp_path: Path) -> None:
    folder = tmp_path / "k"
    folder.mkdir()
    victim = tmp_path / "victim.txt"
    victim.write_text("precious\n")
    victim.chmod(0o644)
    link = folder / "alice.key_secret"
    link.symlink_to(victim)
    refused = _cli(["keys", str(folder), "--name", "alice"], tmp_path)
    assert refused.returncode == 2 and "already exists" in refused.stderr, refused.stderr
    forced = _cli(["keys", str(folder), "--name", "alice", "--force"], tmp_path)
    assert forced.returncode == 0, forced.stderr
    assert victim.read_text() == "precious\n"
    assert stat.S_IMODE(victim.stat().st_mode) == 0o644
    assert not link.is_symlink()
    assert stat.S_IMODE(link.stat().st_mode) == 0o600
    assert zmq.auth.load_certificate(link)[1] is not None
    assert sorted(p.name for p in folder.iterdir()) == ["alice.key", "alice.key_secret"]


@pytest.fixture
def contexts() -> Iterator[tuple[zmq.Context, zmq.Context]]:
    server, clients = zmq.Context(), zmq.Context()
    yield server, clients
    clients.destroy(linger=0)
    server.destroy(linger=0)


def _score(seq: int) -> Score:
    return Score(camera="cam0", seq=seq, ts=1.0, mse=0.01, psnr=20.0, score=0.5,
                 anomaly=False, latency_ms=1.0)


def test_curve_publisher_admits_only_allowed_clients(
    keys: dict[str, Path], contexts: tuple[zmq.Context, zmq.Context]
) -> None:
    server_ctx, client_ctx = contexts
    curve = CurveServer.from_files(str(keys["server_secret"]), str(keys["allowed"]))
    with Publisher("tcp://127.0.0.1:*", linger_ms=0, context=server_ctx, curve=curve) as pub:
        endpoint = pub.last_endpoint
        alice = Subscriber(endpoint, context=client_ctx,
                           curve=CurveClient.from_files(keys["server_public"], keys["alice"]))
        mallory = Subscriber(endpoint, context=client_ctx,
                             curve=CurveClient.from_files(keys["server_public"], keys["mallory"]))
        plain = Subscriber(endpoint, context=client_ctx)
        try:
            seq = 0

            def alice_hears() -> bool:
                nonlocal seq
                pub.send(_score(seq))
                seq += 1
                return alice.recv(timeout=0.02) is not None

            wait_for(alice_hears, 10, "the allowed client to receive")
            for _ in range(50):
                pub.send(_score(seq))
                seq += 1
            # all 50, in order (after any of the join's messages still on their way)
            got: list[int] = []
            while not got or got[-1] != seq - 1:
                msg = alice.recv(timeout=10)
                assert msg is not None, got
                got.append(msg.seq)
            assert got[-50:] == list(range(seq - 50, seq)) and got == sorted(got), got
            assert mallory.recv(timeout=0.3) is None
            assert plain.recv(timeout=0.3) is None
            assert mallory.received == 0 and plain.received == 0
        finally:
            for sub in (alice, mallory, plain):
                sub.close()


@pytest.mark.parametrize(
    "endpoint",
    ["tcp://0.0.0.0:5556", "tcp://*:5556", "tcp://eth0:5556", "tcp://192.168.1.10:5556",
     "tcp://[::]:5556", "ipc://@forecaster"],  # an abstract ipc socket has no file permissions
)
def test_non_loopback_endpoint_needs_curve_or_allow_insecure(
    endpoint: str, keys: dict[str, Path]
) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config({"publish": {"endpoint": endpoint}}, origin="x.toml")
    message = str(info.value)
    assert message.startswith("x.toml: publish") and endpoint in message
    assert "curve_secret_key" in message and "allow_insecure" in message
    parse_config({"publish": {"endpoint": endpoint, "allow_insecure": True}})
    parse_config({"publish": {
        "endpoint": endpoint, "curve_secret_key": str(keys["server_secret"]),
        "curve_allowed_clients": str(keys["allowed"]),
    }})


def test_loopback_and_ipc_endpoints_need_nothing() -> None:
    for endpoint in ("tcp://127.0.0.1:5556", "tcp://localhost:5556", "tcp://[::1]:5556",
                     "tcp://127.0.0.2:5556", "ipc:///run/forecaster/forecaster.sock"):
        assert parse_config({"publish": {"endpoint": endpoint}}).publish.endpoint == endpoint


def test_curve_settings_are_checked(keys: dict[str, Path], tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="needs both"):
        parse_config({"publish": {"curve_secret_key": str(keys["server_secret"])}})
    missing = tmp_path / "nope.key_secret"
    with pytest.raises(ConfigError, match=r"publish\.curve_secret_key: .*nope\.key_secret"):
        parse_config({"publish": {"curve_secret_key": str(missing),
                                  "curve_allowed_clients": str(keys["allowed"])}})
    with pytest.raises(ConfigError, match="holds no secret key"):
        parse_config({"publish": {"curve_secret_key": str(keys["server_public"]),
                                  "curve_allowed_clients": str(keys["allowed"])}})
    with pytest.raises(ConfigError, match=r"publish\.curve_allowed_clients: .*not found"):
        parse_config({"publish": {"curve_secret_key": str(keys["server_secret"]),
                                  "curve_allowed_clients": str(tmp_path / "none")}})


def test_run_refuses_a_non_loopback_endpoint_without_curve_exit_2(tmp_path: Path) -> None:
    endpoint = f"tcp://0.0.0.0:{free_port()}"
    config = tmp_path / "c.toml"
    config.write_text(f'[publish]\nendpoint = "{endpoint}"\n')
    for command in (["run", "--config", str(config)], ["check-config", str(config)]):
        result = _cli(command, tmp_path)
        assert result.returncode == 2, result.stderr
        assert "Traceback" not in result.stderr
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and endpoint in lines[0], result.stderr


@pytest.mark.timeout(150)
def test_daemon_with_curve_serves_only_allowed_subscribers(
    tmp_path: Path, keys: dict[str, Path]
) -> None:
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    keys["server_secret"].chmod(0o640)
    config = config_text(endpoint, [("cam0", "synthetic:?fps=25&seed=5")], {"publish": {
        "curve_secret_key": str(keys["server_secret"]),
        "curve_allowed_clients": str(keys["allowed"]),
    }})
    with Daemon(tmp_path, config) as daemon, \
            Subscriber(endpoint, kinds=["score"],
                       curve=CurveClient.from_files(keys["server_public"], keys["alice"])) as alice, \
            Subscriber(endpoint, curve=CurveClient.from_files(
                keys["server_public"], keys["mallory"])) as mallory, \
            Subscriber(endpoint) as plain:

        def alice_hears() -> bool:
            assert daemon.proc.poll() is None, daemon.log()
            return isinstance(alice.recv(timeout=0.2), Score)

        wait_for(alice_hears, 120, "scores for the allowed subscriber")
        began = time.monotonic()
        heard = 0
        while time.monotonic() - began < 1.5:
            heard += isinstance(alice.recv(timeout=0.1), Score)
        assert heard >= 10
        assert mallory.recv(timeout=0.1) is None and plain.recv(timeout=0.1) is None
        assert mallory.received == 0 and plain.received == 0
        assert daemon.stop() == 0
        assert "CURVE on: 1 client key(s) allowed" in daemon.log()
        warnings = [line for line in daemon.log().splitlines() if "readable by group" in line]
        assert len(warnings) == 1 and str(keys["server_secret"]) in warnings[0]
        assert "mode 0640" in warnings[0]


@pytest.mark.parametrize("suffix", [".h5", ".hdf5"])
def test_legacy_hdf5_model_paths_are_refused_before_loading(tmp_path: Path, suffix: str) -> None:
    from forecaster.model.artifact import bundled_model_path

    # a loadable model under a legacy name: only its name can make it refused
    legacy = tmp_path / f"model{suffix}"
    shutil.copy(bundled_model_path(), legacy)
    config = tmp_path / "c.toml"
    config.write_text(f'[model]\npath = "{legacy}"\n')
    for command in (
        ["run", "--config", str(config), "--max-frames", "5"],
        ["check-config", str(config)],
        ["replay", "synthetic:?frames=30", "--model", str(legacy), "--out", str(tmp_path / "r")],
        ["eval", "synthetic:?frames=30", "--model", str(legacy), "--out", str(tmp_path / "e")],
    ):
        result = _cli(command, tmp_path)
        assert result.returncode == 2, (command, result.stderr)
        assert "Traceback" not in result.stderr
        lines = [line for line in result.stderr.splitlines() if "error" in line.lower()]
        assert len(lines) == 1, (command, result.stderr)
        assert str(legacy) in lines[0] and "must end in .keras" in lines[0], lines[0]
    assert not (tmp_path / "r").exists() and not (tmp_path / "e").exists()


@pytest.mark.parametrize(
    ("client", "why"),
    [
        ("plain", "CURVE"),  # which side notices the mismatch first varies
        ("wrong server key", "wrong server public key"),
        ("unknown client key", "not in the allowed clients"),
    ],
)
def test_refused_subscribers_are_logged_at_debug(
    client: str, why: str, keys: dict[str, Path], contexts: tuple[zmq.Context, zmq.Context],
    caplog: pytest.LogCaptureFixture,
) -> None:
    server_ctx, client_ctx = contexts
    caplog.set_level(logging.DEBUG, logger="forecaster.publisher")
    curve = CurveServer.from_files(str(keys["server_secret"]), str(keys["allowed"]))
    clients = {
        "plain": None,
        # mallory's public key stands for a wrong server key
        "wrong server key": CurveClient.from_files(keys["mallory"], keys["alice"]),
        "unknown client key": CurveClient.from_files(keys["server_public"], keys["mallory"]),
    }
    with Publisher("tcp://127.0.0.1:*", linger_ms=0, context=server_ctx, curve=curve) as pub:
        assert pub.log_refusals() == 0

        def refused(count: int) -> bool:
            pub.log_refusals()
            return pub.refused >= count

        with Subscriber(pub.last_endpoint, context=client_ctx, curve=clients[client]):
            wait_for(lambda: refused(1), 10, f"a {client} refusal")
            if client == "wrong server key":  # it retries about 10 times a second
                wait_for(lambda: refused(5), 10, "5 refusals")
        lines = [r.getMessage() for r in caplog.records if r.name == "forecaster.publisher"
                 and r.getMessage().startswith("refused a subscriber")]
        assert lines and all(r.levelno == logging.DEBUG for r in caplog.records
                             if r.getMessage() in lines)
        assert why in lines[0] and pub.last_endpoint in lines[0]
        # rate-limited: a client that keeps retrying does not get a line per retry
        assert len(lines) == 1 if pub.refused == 1 else len(lines) < pub.refused
