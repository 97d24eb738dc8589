"""Seeing inside real ``taskfleet`` processes: ``/metrics``, ``/healthz`` and ``/readyz`` on their
own listeners, read with a plain HTTP client over TLS (the listener's certificate pinned by its
fingerprint, as agents pin it); the Grafana dashboard's metrics; JSON logs and ``--log-file``;
``taskfleet stats``."""

from __future__ import annotations

import asyncio
import hashlib
import http.client
import json
import re
import socket
import ssl
import sys
from pathlib import Path
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from tests.helpers import Fleet, Proc, free_port, task_doc, until

DASHBOARD = Path(__file__).resolve().parents[2] / "docs" / "grafana" / "taskfleet.json"
NON_LOOPBACK_PROBE = "192.0.2.1"
"""A documentation address (TEST-NET-1): only used to ask the kernel which local address routes
outward; nothing is sent to it."""


def _get(
    url: str, path: str, fingerprint: str = "", token: str = "", source: str = ""
) -> tuple[int, str]:
    """GET ``path`` from a role's listener (``wss://HOST:PORT`` or ``http://HOST:PORT``). Over
    TLS the certificate is checked against ``fingerprint`` (its SHA-256, as the fleet pins it),
    not against a CA: the roles make their own certificates."""
    scheme, _, hostport = url.partition("://")
    host, port = hostport.rsplit(":", 1)
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    bind = (source, 0) if source else None
    conn: http.client.HTTPConnection
    if scheme in ("wss", "https"):
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE  # checked below by fingerprint, like the fleet's pin
        conn = http.client.HTTPSConnection(
            host, int(port), context=ctx, timeout=10, source_address=bind
        )
        conn.connect()
        assert isinstance(conn.sock, ssl.SSLSocket)
        der = conn.sock.getpeercert(binary_form=True)
        assert der is not None
        assert "SHA256:" + hashlib.sha256(der).hexdigest() == fingerprint, "not the pinned cert"
    else:
        conn = http.client.HTTPConnection(host, int(port), timeout=10, source_address=bind)
    try:
        conn.request("GET", path, headers=headers)
        response = conn.getresponse()
        return response.status, response.read().decode()
    finally:
        conn.close()


async def get(
    url: str, path: str, fingerprint: str = "", token: str = "", source: str = ""
) -> tuple[int, str]:
    return await asyncio.to_thread(_get, url, path, fingerprint, token, source)


async def scrape(url: str, fingerprint: str = "", token: str = "") -> dict[str, float]:
    """``/metrics`` parsed: every sample by ``name{label="value",...}`` (labels sorted)."""
    status, text = await get(url, "/metrics", fingerprint, token)
    assert status == 200, text
    samples: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            labels = ",".join(f'{k}="{v}"' for k, v in sorted(s.labels.items()))
            samples[f"{s.name}{{{labels}}}" if labels else s.name] = s.value
    return samples


async def exported_names(url: str, fingerprint: str = "") -> set[str]:
    """Every name a scrape exports: its samples' names, and each family's name with the suffixes
    its type gives (a counter with no series yet is exported all the same)."""
    status, text = await get(url, "/metrics", fingerprint)
    assert status == 200, text
    names: set[str] = set()
    suffixes = {"counter": ["_total"], "histogram": ["_bucket", "_sum", "_count"]}
    for family in text_string_to_metric_families(text):
        names.add(family.name)
        names.update(family.name + suffix for suffix in suffixes.get(family.type, []))
        names.update(s.name for s in family.samples)
    return names


def non_loopback_address() -> str | None:
    """An address of this machine that is not loopback (the one that routes outward), if any."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect((NON_LOOPBACK_PROBE, 9))
        except OSError:
            return None
        address = str(probe.getsockname()[0])
    return None if address.startswith("127.") else address


async def start_agent(fleet: Fleet, name: str, *extra: str) -> Proc:
    """A real agent process enrolled with the fleet's token, with more options (``extra``)."""
    assert fleet.ns is not None
    proc = Proc(
        name,
        [
            "agent",
            "--server",
            fleet.ns.url,
            "--data",
            str(fleet.root / name),
            "--name",
            name,
            "--enrol-token",
            fleet.enrol_token,
            *fleet.trust_args(),
            *extra,
        ],
        fleet.root / f"{name}.log",
    )
    fleet.procs.append(proc)
    return await proc.start(wait_ready=False)


async def start_fleet(fleet: Fleet, *ns_extra: str) -> Any:
    """An NS and one TS ``ts-a``, linked."""
    await fleet.server("ns", 0, *ns_extra)
    ts = await fleet.taskserver("ts-a")
    async with fleet.admin() as c:

        async def linked() -> bool:
            return any(r["online"] for r in await c.call("taskservers.list"))

        await until(linked, "ts-a linked to the NS")
    return ts


async def test_metrics_move_after_a_run(fleet: Fleet, tmp_path):
    """A run on an agent behind a TS moves the NS's and the TS's metrics: instances by state,
    runs ended, dispatch and roll-up batches at both ends; connections count the TS and the
    agent; /healthz and /readyz say 200; other paths still get the WebSocket answer."""
    ts = await start_fleet(fleet)
    ns = fleet.ns
    assert ns is not None
    await fleet.agent("pc-1")
    await fleet.wait_online(["pc-1"])
    before_ns = await scrape(ns.url, ns.fingerprint)
    before_ts = await scrape(ts.url, ts.fingerprint)
    assert before_ns['taskfleet_connections{role="taskserver",state="open"}'] == 1
    assert before_ts['taskfleet_relay_agents{relay="ts-a"}'] == 1
    assert before_ts["taskfleet_ns_link_up"] == 1

    doc = tmp_path / "hello.toml"
    doc.write_text(task_doc("hello", "echo hello"))
    assert (await fleet.cli("task", "add", str(doc)))[0] == 0
    code, out, err = await fleet.cli("run", "hello", "--all", "--wait")
    assert code == 0, out + err

    after_ns = await scrape(ns.url, ns.fingerprint)
    succeeded = 'taskfleet_instances_total{state="succeeded"}'
    assert after_ns[succeeded] == before_ns[succeeded] + 1
    ended = 'taskfleet_runs_ended_total{state="succeeded"}'
    assert after_ns[ended] == before_ns[ended] + 1
    for histogram in ("taskfleet_dispatch_batch_size", "taskfleet_rollup_batch_size"):
        assert after_ns[f"{histogram}_count"] > before_ns[f"{histogram}_count"], histogram
    assert (
        after_ns["taskfleet_dispatch_batch_size_sum"]
        >= before_ns["taskfleet_dispatch_batch_size_sum"] + 1
    )
    assert after_ns['taskfleet_store_query_seconds_count{kind="batch"}'] > 0
    assert after_ns["process_resident_memory_bytes"] > 0

    async def ts_rolled_up() -> dict[str, float] | None:
        now = await scrape(ts.url, ts.fingerprint)
        return now if now["taskfleet_relay_rollup_batch_size_count"] > 0 else None

    after_ts = await until(ts_rolled_up, "the TS counted its roll-up to the NS")
    assert after_ts["taskfleet_relay_dispatch_batch_size_count"] == (
        before_ts["taskfleet_relay_dispatch_batch_size_count"] + 1
    )
    assert after_ts['taskfleet_relay_reports_total{flow="dispatched",relay="ts-a"}'] == 1

    for url, fp in ((ns.url, ns.fingerprint), (ts.url, ts.fingerprint)):
        assert await get(url, "/healthz", fp) == (200, "ok\n")
        assert await get(url, "/readyz", fp) == (200, "ready\n")
        status, _ = await get(url, "/", fp)
        assert status == 426, "a plain GET elsewhere is still the WebSocket upgrade's business"


async def test_taskserver_not_ready_until_linked_and_after_the_ns_died(fleet: Fleet):
    """A TS says 503 on /readyz, with the reason, until its NS has welcomed it, and again once
    the NS is gone; /healthz stays 200 (the process itself is fine)."""
    ts = await start_fleet(fleet)
    ns = fleet.ns
    assert ns is not None
    assert await get(ts.url, "/readyz", ts.fingerprint) == (200, "ready\n")

    ns.kill()
    await ns.wait()

    async def not_ready() -> str | None:
        status, body = await get(ts.url, "/readyz", ts.fingerprint)
        return body if status == 503 else None

    body = await until(not_ready, "the TS says it is not ready once its NS died")
    assert body.strip() == "not ready: not linked to the NS", body  # no address: anyone reads it
    assert await get(ts.url, "/healthz", ts.fingerprint) == (200, "ok\n")
    scraped = await scrape(ts.url, ts.fingerprint)
    assert scraped["taskfleet_ns_link_up"] == 0

    # A TS that never reached its NS is not ready from its first moment on.
    late = await fleet.taskserver("ts-late")
    status, body = await get(late.url, "/readyz", late.fingerprint)
    assert status == 503 and "not linked to the NS" in body, body


async def test_metrics_need_a_token_from_another_address(fleet: Fleet, tmp_path):
    """From an address that is not loopback, /metrics answers 401 without a token, 401 with a
    wrong one, 200 with any admin token (NS) or the --metrics-token-file token (TS); /healthz
    answers everyone. From loopback no token is needed."""
    address = non_loopback_address()
    assert address is not None, "this test needs a non-loopback address on the machine"
    token_file = tmp_path / "metrics.token"
    token_file.write_text("tf-metrics-secret\n")
    await fleet.server("ns", 0, "--listen", "0.0.0.0:0")
    ns = fleet.ns
    assert ns is not None
    ts = await fleet.taskserver(
        "ts-a", 0, "--listen", "0.0.0.0:0", "--metrics-token-file", str(token_file)
    )
    ns_url = ns.url.replace("0.0.0.0", address)
    ts_url = ts.url.replace("0.0.0.0", address)
    async with fleet.admin() as c:
        viewer = (await c.call("admins.add", name="grafana", role="viewer"))["token"]

    for url, fp, good in (
        (ns_url, ns.fingerprint, viewer),
        (ts_url, ts.fingerprint, "tf-metrics-secret"),
    ):
        status, body = await get(url, "/metrics", fp, source=address)
        assert status == 401 and "Authorization: Bearer" in body, (status, body)
        assert (await get(url, "/metrics", fp, token="wrong", source=address))[0] == 401
        status, body = await get(url, "/metrics", fp, token=good, source=address)
        assert status == 200 and "taskfleet_handshakes_total" in body, (status, body[:200])
        assert (await get(url, "/healthz", fp, source=address))[0] == 200
        loopback = url.replace(address, "127.0.0.1")
        assert (await get(loopback, "/metrics", fp, source="127.0.0.1"))[0] == 200


async def test_agent_metrics_listener(fleet: Fleet, tmp_path):
    """``agent --metrics-listen`` serves its outbox and link over plain HTTP; /readyz is 200 once
    its live link is up."""
    await fleet.server()
    port = free_port()
    agent = await start_agent(fleet, "pc-1", "--metrics-listen", f"127.0.0.1:{port}")
    url = f"http://127.0.0.1:{port}"

    async def ready() -> bool:
        try:
            return (await get(url, "/readyz"))[0] == 200
        except OSError:
            return False

    await until(ready, "the agent's /readyz says 200", 30)
    scraped = await scrape(url)
    assert scraped["taskfleet_agent_link_up"] == 1
    assert scraped["taskfleet_agent_outbox_size"] == 0
    assert agent.proc is not None and agent.proc.returncode is None


async def test_dashboard_uses_only_exported_metrics(fleet: Fleet):
    """Every metric name in docs/grafana/taskfleet.json's queries is exported by a running NS,
    TS or agent (``--metrics-listen``)."""
    dashboard = json.loads(DASHBOARD.read_text())
    exprs = [target["expr"] for panel in dashboard["panels"] for target in panel.get("targets", [])]
    exprs += [v["query"] for v in dashboard["templating"]["list"] if v["type"] == "query"]
    used = set()
    for expr in exprs:
        used.update(re.findall(r"\b((?:taskfleet|process|python)_[a-z0-9_]+)\b", expr))
    assert len(used) >= 20, used

    ts = await start_fleet(fleet)
    ns = fleet.ns
    assert ns is not None
    port = free_port()
    await start_agent(fleet, "pc-1", "--metrics-listen", f"127.0.0.1:{port}")
    agent_url = f"http://127.0.0.1:{port}"

    async def agent_up() -> bool:
        try:
            return (await get(agent_url, "/healthz"))[0] == 200
        except OSError:
            return False

    await until(agent_up, "the agent's metrics listener")
    exported = (
        await exported_names(ns.url, ns.fingerprint)
        | await exported_names(ts.url, ts.fingerprint)
        | await exported_names(agent_url)
    )
    assert used <= exported, f"not exported: {sorted(used - exported)}"


async def test_json_logs_carry_role_and_name_and_log_file(fleet: Fleet, tmp_path):
    """A role whose stderr is not a terminal logs JSON lines, each with its role and name;
    --log-file sends them to that file (made 0600) instead."""
    log_file = tmp_path / "ts.log"
    await fleet.server()
    ts = await fleet.taskserver("ts-a", 0, "--log-file", str(log_file))
    ns = fleet.ns
    assert ns is not None

    def events(text: str) -> list[dict[str, Any]]:
        return [json.loads(line) for line in text.splitlines() if line.startswith("{")]

    ns_events = events(ns.log_path.read_text())
    listening = [e for e in ns_events if e["event"] == "server_listening"]
    assert listening and listening[0]["role"] == "server" and listening[0]["name"] == "ns"
    assert all(e.get("role") and e.get("name") for e in ns_events), ns_events

    async def linked() -> list[dict[str, Any]] | None:
        found = [e for e in events(log_file.read_text()) if e["event"] == "ns_connected"]
        return found or None

    connected = await until(linked, "the TS logged its link to the NS in --log-file")
    assert connected[0]["role"] == "taskserver" and connected[0]["name"] == "ts-a"
    assert log_file.stat().st_mode & 0o777 == 0o600
    assert "ns_connected" not in ts.log()


async def test_stats_verb(fleet: Fleet):
    """`taskfleet stats` prints the NS's connections, runs in flight, database size and TS links
    (with their ping round trip); --json gives the same as data."""
    await start_fleet(fleet)
    data = await fleet.cli_json("stats")
    assert data["connections"]["taskserver"] == 1
    assert data["runs_in_flight"] == 0
    assert data["database_bytes"]["db"] > 0  # SQLite: its file; PostgreSQL: pg_database_size
    assert ("wal" in data["database_bytes"]) is (fleet.database is None)
    assert list(data["taskservers"]) == ["ts-a"] and data["taskservers"]["ts-a"]["open"]
    code, out, err = await fleet.cli("stats")
    assert code == 0, err
    assert "task servers 1" in out and "runs in flight:  0" in out, out
    assert "ts-a" in out, out
    assert ("write-ahead log" in out) is (fleet.database is None), out


async def test_an_unreadable_metrics_token_file_is_a_usage_error(tmp_path):
    """A TS or an agent given a --metrics-token-file it cannot read stops before it starts,
    exit 2, naming the file; nothing is made in its data folder."""
    missing = tmp_path / "missing.token"
    for role in ("taskserver", "agent"):
        data = tmp_path / role
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "admin",
            role,
            "--server",
            "wss://127.0.0.1:1",
            "--server-fingerprint",
            "SHA256:" + "0" * 64,
            "--data",
            str(data),
            "--metrics-token-file",
            str(missing),
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        _, err = await asyncio.wait_for(proc.communicate(), 30)
        assert proc.returncode == 2, err
        assert f"cannot read --metrics-token-file {missing}" in err.decode()
        assert not data.exists()
