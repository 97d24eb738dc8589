"""One realistic instance of every message type, shared by the protocol tests."""

from __future__ import annotations

from protocol import PROTOCOL_VERSION
from protocol.messages import (
    Ack,
    Cancel,
    Challenge,
    Dispatch,
    Error,
    Event,
    Execute,
    Hello,
    Message,
    Presence,
    Proof,
    Report,
    Reports,
    ReportsAck,
    Request,
    Response,
    Revoke,
    StepRequest,
    StepResult,
    Target,
    Tickle,
    Welcome,
)

TASK = {
    "name": "hello",
    "type": "run-script",
    "kind": "client",
    "timeout_s": 60,
    "params": {"interpreter": "sh", "script": "echo %COMPUTERNAME%", "success_codes": [0, 3]},
    "description": "",
}

SAMPLES: dict[str, Message] = {
    "hello": Hello(
        id="a1",
        version=PROTOCOL_VERSION,
        role="agent",
        identity="pc-0042",
        credentials={"token": "s3cret"},
        capabilities=["run-script", "noop"],
        info={"os": "linux", "agent_version": "0.1.0", "addresses": ["10.0.0.7", "fe80::1"]},
    ),
    "welcome": Welcome(
        id="s1",
        reply_to="a1",
        version=PROTOCOL_VERSION,
        server="ns-main",
        config={"taskserver": "ws://127.0.0.1:9001", "flush_ms": 250},
    ),
    "error": Error(id="s2", reply_to="a7", code="unknown_run", message="no run 17; list runs"),
    "ack": Ack(id="t3", reply_to="n9"),
    "dispatch": Dispatch(
        id="n9",
        run_id=17,
        task=TASK,
        expires_in_s=299.5,
        targets=[
            Target(
                instance_id=101,
                computer="pc-0042",
                computer_id=42,
                tokens={"COMPUTERNAME": "pc-0042", "RUNID": "17"},
                mac=b"\x5a" * 32,
            ),
            Target(instance_id=(4_000_000 << 40) | 102, computer="pc-0043", computer_id=43),
        ],
    ),
    "execute": Execute(
        id="t4",
        run_id=17,
        instance_id=101,
        task=TASK,
        tokens={"COMPUTERNAME": "pc-0042", "COMPUTERID": "42"},
        timeout_s=42.25,
        mac=b"\x5a" * 32,
    ),
    "cancel": Cancel(id="n10", instance_ids=[101, 102, 103]),
    "tickle": Tickle(id="n11", computers=["pc-0042", "pc-0043"]),
    "reports": Reports(
        id="a2",
        items=[
            Report(
                instance_id=101, state="running", computer="pc-0042", started_at=1_700_000_000.5
            ),
            Report(
                instance_id=102,
                state="failed",
                computer="pc-0043",
                return_code=3,
                output="boom\n",
                reason="exit code 3 is not a success code",
                started_at=1_700_000_000.0,
                ended_at=1_700_000_001.25,
            ),
        ],
    ),
    "reports_ack": ReportsAck(id="t5", reply_to="a2"),
    "presence": Presence(id="t6", online=["pc-0042"], offline=["pc-0099"], full=True),
    "request": Request(id="m1", op="run", args={"task": "hello", "targets": ["pc-0042"]}),
    "response": Response(
        id="n12", reply_to="m1", data={"run_id": 17, "instances": [101, 102], "ok": True}
    ),
    "event": Event(id="n13", run_id=17, kind="instance", data={"instance_id": 101, "state": "x"}),
    "challenge": Challenge(id="n16", reply_to="a1", nonce=b"\x01" * 32, server="ns", signature=b""),
    "proof": Proof(id="n17", reply_to="n16", signature=b"\x02" * 64),
    "step_request": StepRequest(
        id="n14",
        instance_id=101,
        step="fix",
        task={
            "name": "fix",
            "type": "run-script-on-taskserver",
            "kind": "taskserver",
            "params": {"script": "true"},
        },
        tokens={"COMPUTERNAME": "pc-1"},
        timeout_s=30.0,
    ),
    "step_result": StepResult(
        id="n15",
        reply_to="n14",
        result=Report(instance_id=101, state="succeeded", step="fix", return_code=0, output="ok"),
    ),
    "revoke": Revoke(id="n16", agents={"pc-1": 1_900_000_000}),
}
