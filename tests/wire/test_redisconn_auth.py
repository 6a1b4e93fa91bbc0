"""Redis with ACL users, passwords from files and TLS with client certificates: a real
redis-server configured from deploy/redis/users.conf (tests/control/secure_redis.py). Each user
can do its job through wire.redisconn and nothing the ACL forbids."""

from __future__ import annotations

import secrets
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from tests.control.secure_redis import SecureRedis
from wire import registry
from wire.redisconn import RedisConfigError, connect, redact, resolve_url

RELAYCTL = str(Path(sys.executable).parent / "relayctl")
KEY1 = secrets.token_bytes(16)


@pytest.fixture(scope="module")
def server() -> Iterator[SecureRedis]:
    with SecureRedis() as s:
        yield s


@pytest.fixture
def sr(server: SecureRedis) -> Iterator[SecureRedis]:
    admin = server.admin()
    admin.flushall()
    registry.set_key(admin, 1, KEY1)
    registry.set_current_key(admin, 1)
    admin.close()
    yield server


def client(sr: SecureRedis, user: str, **env: str) -> redis.Redis:
    url, warnings = resolve_url(sr.tls_url, environ={**sr.tls_env(user), **env})
    assert warnings == []
    return connect(url, timeout=5)


def rec(cluster: int, tid: int) -> registry.TransceiverRecord:
    return registry.TransceiverRecord(cluster=cluster, id=tid, tunnel=f"10.0.0.{tid}:5000")


def test_each_user_does_its_job_over_tls(sr: SecureRedis) -> None:
    txr = client(sr, "txr-1-7")
    registry.register(txr, rec(1, 7))  # its own entry, the index, the event
    assert txr.hgetall("edge:keys") == {b"1": KEY1.hex().encode()}
    relay = client(sr, "relay")
    reg = registry.read_registry(relay)
    assert reg.problems == [] and set(reg.transceivers) == {(1, 7)} and reg.keys == {1: KEY1}
    registry.register_relay(
        relay, registry.RelayRecord("h/edge", "10.1.0.1:6080", keys=((1, "x"),))
    )
    relays, problems = registry.read_relays(txr)  # a transceiver reads relays
    assert problems == [] and relays["10.1.0.1"].keys == ((1, "x"),)
    relay.set("edge:flow:1.2.3.4:5:6.7.8.9:3478", "1:7", px=5000)
    keys = client(sr, "keys")
    registry.set_key(keys, 2, secrets.token_bytes(16))
    registry.set_current_key(keys, 2)
    assert registry.read_registry(relay).current_key == 2
    registry.deregister(txr, rec(1, 7))
    for c in (txr, relay, keys):
        c.close()


def test_a_transceiver_reads_relays_past_an_expired_entry(sr: SecureRedis) -> None:
    # A relay that died leaves its index member behind; pruning it is a write the transceiver's
    # user may not do (NOPERM): reading must still work, or every beat of every transceiver
    # would fail until a relay prunes it.
    relay = client(sr, "relay")
    registry.register_relay(relay, registry.RelayRecord("h/gone", "10.1.0.9:6080"))
    registry.register_relay(relay, registry.RelayRecord("h/live", "10.1.0.8:6080"))
    admin = sr.admin()
    admin.delete("edge:relay:10.1.0.9")  # its hash expired
    txr = client(sr, "txr-1-7")
    relays, problems = registry.read_relays(txr)
    assert set(relays) == {"10.1.0.8"} and problems == []
    assert admin.sismember("edge:relays", "10.1.0.9")  # left for a relay to prune
    registry.read_relays(relay)
    assert not admin.sismember("edge:relays", "10.1.0.9")
    for c in (txr, relay, admin):
        c.close()


async def test_a_transceiver_user_spends_client_tokens_in_redis(sr: SecureRedis) -> None:
    # Single use across the cluster needs SET NX on {prefix}:tokens:*; without it every SET is
    # NOPERM and each transceiver falls back to its own memory (one call per transceiver).
    from transceiver.auth import RedisSpent

    for user in ("txr-1-7", "transceiver"):
        url, _ = resolve_url(sr.tls_url, environ=sr.tls_env(user))
        spent = RedisSpent(url, "edge", 5.0)
        try:
            assert await spent(f"jti-{user}", 60.0) is True
            assert await spent(f"jti-{user}", 60.0) is False  # the second use
            assert spent.fallbacks == 0  # answered by Redis, not the local fallback
        finally:
            spent.close()
    admin = sr.admin()
    assert admin.exists("edge:tokens:jti-txr-1-7") and 0 < admin.pttl("edge:tokens:jti-txr-1-7")
    admin.close()
    txr = client(sr, "txr-1-7")
    with pytest.raises(redis.exceptions.NoPermissionError):
        txr.set("edge:keys:current", "9")  # SET reaches only the token keys
    txr.close()


def test_a_transceiver_cannot_rewrite_keys_or_other_transceivers(sr: SecureRedis) -> None:
    txr = client(sr, "txr-1-7")
    with pytest.raises(redis.exceptions.NoPermissionError):
        registry.set_key(txr, 1, secrets.token_bytes(16))
    with pytest.raises(redis.exceptions.NoPermissionError):
        registry.set_current_key(txr, 3)
    with pytest.raises(redis.exceptions.NoPermissionError):
        txr.hset("edge:keys", "1", "00" * 16)
    with pytest.raises(redis.exceptions.NoPermissionError):
        registry.register(txr, rec(1, 8))  # another transceiver's entry: taking its calls
    with pytest.raises(redis.exceptions.NoPermissionError):
        txr.set("edge:flow:1.2.3.4:5:6.7.8.9:3478", "1:7")  # flows are the relays'
    with pytest.raises(redis.exceptions.NoPermissionError):
        registry.register_relay(txr, registry.RelayRecord("evil", "10.9.9.9:6080"))
    with pytest.raises(redis.exceptions.NoPermissionError):
        txr.flushall()
    txr.close()
    # The shared transceiver user (deploy/kubernetes) may write any transceiver entry, no key.
    shared = client(sr, "transceiver")
    registry.register(shared, rec(1, 9))
    with pytest.raises(redis.exceptions.NoPermissionError):
        registry.set_key(shared, 1, secrets.token_bytes(16))
    registry.deregister(shared, rec(1, 9))
    shared.close()
    admin = sr.admin()
    assert admin.hgetall("edge:keys") == {b"1": KEY1.hex().encode()}
    assert admin.get("edge:keys:current") == b"1" and not admin.exists("edge:txr:1:8")
    admin.close()


def test_a_relay_cannot_write_keys_or_transceiver_entries(sr: SecureRedis) -> None:
    relay = client(sr, "relay")
    with pytest.raises(redis.exceptions.NoPermissionError):
        registry.set_key(relay, 2, secrets.token_bytes(16))
    with pytest.raises(redis.exceptions.NoPermissionError):
        relay.hset("edge:txr:1:7", "tunnel", "10.9.9.9:5000")
    relay.close()
    keys = client(sr, "keys")
    with pytest.raises(redis.exceptions.NoPermissionError):
        registry.register(keys, rec(1, 7))
    keys.close()


def test_refused_without_the_right_password_certificate_or_ca(
    sr: SecureRedis, tmp_path: Path
) -> None:
    wrong = tmp_path / "wrong"
    wrong.write_text("not-the-password")
    wrong.chmod(0o600)
    with pytest.raises(redis.exceptions.AuthenticationError):
        client(sr, "relay", REDIS_PASSWORD_FILE=str(wrong)).ping()
    # No user at all: the default user is off.
    anonymous = {k: v for k, v in sr.tls_env("relay").items() if "USERNAME" not in k}
    anonymous.pop("REDIS_PASSWORD_FILE")
    url, _ = resolve_url(sr.tls_url, environ=anonymous)
    with pytest.raises(redis.exceptions.AuthenticationError):
        connect(url, timeout=5).get("edge:keys:current")
    # Another CA: the server's certificate does not verify.
    other = tmp_path / "other"
    other.mkdir()
    from tests.control.secure_redis import make_certs

    make_certs(other)
    with pytest.raises(redis.exceptions.ConnectionError, match="certificate verify failed"):
        client(sr, "relay", REDIS_CA_FILE=str(other / "ca.crt")).ping()
    # Plain text to the TLS port, and TLS without a client certificate: refused.
    with pytest.raises(redis.exceptions.ConnectionError):
        url, _ = resolve_url(sr.tls_url.replace("rediss", "redis"), environ={})
        connect(url, timeout=2, retries=False).ping()
    env = {
        k: v
        for k, v in sr.tls_env("relay").items()
        if k not in ("REDIS_CERT_FILE", "REDIS_KEY_FILE")
    }
    url, _ = resolve_url(sr.tls_url, environ=env)
    with pytest.raises(redis.exceptions.ConnectionError):
        connect(url, timeout=2, retries=False).ping()


def test_resolve_url_sources_and_errors(tmp_path: Path) -> None:
    pw = tmp_path / "pw"
    pw.write_text("s3cr:t@/x\n")
    pw.chmod(0o600)
    url, w = resolve_url(
        "redis://h:1/0", environ={"REDIS_PASSWORD_FILE": str(pw), "REDIS_USERNAME": "u"}
    )
    assert url == "redis://u:s3cr%3At%40%2Fx@h:1/0" and w == []
    assert redis.connection.parse_url(url)["password"] == "s3cr:t@/x"
    assert redact(url) == "redis://***@h:1/0"
    # The URL's own password wins; REDIS_URL and a URL file are read when no URL is given.
    assert resolve_url("redis://:a@h/0", environ={"REDIS_PASSWORD": "b"})[0] == "redis://:a@h/0"
    assert resolve_url(None, environ={"REDIS_URL": "unix:///s.sock"})[0] == "unix:///s.sock"
    f = tmp_path / "url"
    f.write_text("redis://:pw@h:2/1\n")
    f.chmod(0o644)
    url, w = resolve_url(None, url_file=str(f), environ={})
    assert url == "redis://:pw@h:2/1" and "readable by group or others (mode 644)" in w[0]
    assert resolve_url(None, environ={}) == (None, [])
    for bad, says in (
        ("http://h/0", "expected redis://"),
        ("redis://h/0?ssl_ca_certs=/x", "TLS files given for a plain-text URL"),
        ("rediss://h/0?ssl_ca_certs=/nonexistent/ca", "cannot read it"),
    ):
        with pytest.raises(RedisConfigError, match=says):
            resolve_url(bad, environ={})
    with pytest.raises(RedisConfigError, match="No such file"):
        resolve_url("redis://h/0", password_file=str(tmp_path / "none"), environ={})
    # An empty password file (a Secret made before Redis had a password): no password, no user.
    (tmp_path / "empty").write_text("\n")
    (tmp_path / "empty").chmod(0o600)
    url, w = resolve_url("redis://h/0", password_file=str(tmp_path / "empty"),
                         environ={"REDIS_USERNAME": "relay"})  # fmt: skip
    assert url == "redis://h/0" and w == [f"Redis password file {tmp_path}/empty is empty: "
                                          "connecting without a password"]  # fmt: skip


def test_relayctl_keys_needs_the_keys_user(sr: SecureRedis) -> None:
    """relayctl keys over TLS: the keys user adds and promotes; the relay user is refused."""
    import os

    def run(user: str, *args: str) -> subprocess.CompletedProcess[str]:
        env = {**os.environ, **sr.tls_env(user), "REDIS_URL": sr.tls_url}
        res = subprocess.run(
            [RELAYCTL, "keys", *args], capture_output=True, text=True, env=env, timeout=60
        )
        assert "Traceback" not in res.stdout + res.stderr
        return res

    res = run("relay", "add")
    assert (
        res.returncode == 1 and "no permissions" in res.stderr and "keys admin user" in res.stderr
    )
    assert res.stderr.startswith(f"relayctl: error: rediss://***@127.0.0.1:{sr.port}/0: refused")
    res = run("keys", "add", "--key-id", "4")
    assert res.returncode == 0 and "added key 4" in res.stdout, res.stderr
    res = run("keys", "promote", "4")  # no relay registered: allowed, with a warning
    assert res.returncode == 0 and "no relay is registered" in res.stderr
    listed = run("keys", "list")
    assert listed.returncode == 0 and KEY1.hex() not in listed.stdout
    assert "password" not in listed.stdout + listed.stderr
    admin = sr.admin()
    assert admin.get("edge:keys:current") == b"4"
    admin.close()


def test_cluster_records_are_the_admins_to_write_and_the_relays_to_read(sr: SecureRedis) -> None:
    """relayctl clusters with the keys (fleet admin) user; a relay reads them with its own user
    (read_registry does, every pass) and cannot write them; a transceiver cannot either."""
    import os

    env = {**os.environ, **sr.tls_env("keys"), "REDIS_URL": sr.tls_url}
    argv = [RELAYCTL, "clusters", "add", "3", "--region", "eu-west", "--lat", "50.1"]
    argv += ["--lon", "8.7", "--registry", "redis://:hunter2@10.2.0.1:6379/0"]
    res = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=60)
    assert res.returncode == 0, res.stderr
    assert "hunter2" not in res.stdout + res.stderr
    relay = client(sr, "relay")
    reg = registry.read_registry(relay)
    assert reg.problems == []
    assert reg.clusters[3].region == "eu-west" and reg.clusters[3].registry.endswith("/0")
    with pytest.raises(redis.exceptions.NoPermissionError):
        registry.put_cluster(relay, registry.ClusterRecord(4, "x", 0, 0))
    relay.close()
    txr = client(sr, "txr-1-7")
    with pytest.raises(redis.exceptions.NoPermissionError):
        registry.remove_cluster(txr, 3)
    txr.close()


def test_the_front_user_reads_clusters_and_transceivers_only(sr: SecureRedis) -> None:
    """What transceiver front reads (transceiver/front.py FleetView) works with its user; the
    routing keys and any write are refused."""
    admin = sr.admin()
    registry.put_cluster(admin, registry.ClusterRecord(1, "us-east", 40.7, -74.0))
    admin.close()
    txr = client(sr, "txr-1-7")
    registry.register(txr, rec(1, 7))
    txr.close()
    relay = client(sr, "relay")  # relayctl run --region: writes its region's reach, reads none
    registry.report_reach(relay, registry.ReachReport("ap-south", 19.1, 72.9, 1e9))
    with pytest.raises(redis.exceptions.NoPermissionError):
        registry.read_reach(relay)
    relay.close()
    front = client(sr, "front")
    clusters, problems = registry.read_clusters(front)
    assert problems == [] and set(clusters) == {1}
    txrs, problems = registry.read_transceivers(front)
    assert problems == [] and set(txrs) == {(1, 7)}
    reach, problems = registry.read_reach(front)
    assert problems == [] and reach == {
        "ap-south": registry.ReachReport("ap-south", 19.1, 72.9, 1e9)
    }
    with pytest.raises(redis.exceptions.NoPermissionError):
        registry.report_reach(front, registry.ReachReport("evil", 0, 0, 1e9))
    with pytest.raises(redis.exceptions.NoPermissionError):
        front.hgetall("edge:keys")
    with pytest.raises(redis.exceptions.NoPermissionError):
        registry.register(front, rec(1, 8))
    front.close()
