"""send-email: mail through the SMTP server in the NS's configuration (--smtp and friends)."""

from __future__ import annotations

import asyncio
import csv
import io
import smtplib
import ssl
import time
from email.message import EmailMessage
from email.utils import make_msgid
from typing import TYPE_CHECKING, Any

from protocol.states import InstanceState
from protocol.tasks import replace_tokens
from runtime.runner import Outcome

if TYPE_CHECKING:
    from server.tasktypes.context import ServerContext


def _send(cfg: dict[str, Any], message: EmailMessage) -> None:
    host, port = cfg["host"], int(cfg["port"])
    security = cfg.get("security", "none")
    if security == "tls":
        client: smtplib.SMTP = smtplib.SMTP_SSL(
            host, port, timeout=30, context=ssl.create_default_context()
        )
    else:
        client = smtplib.SMTP(host, port, timeout=30)
    with client:
        if security == "starttls":
            client.starttls(context=ssl.create_default_context())
        if cfg.get("user"):
            client.login(cfg["user"], cfg.get("password", ""))
        client.send_message(message)


async def run(ctx: ServerContext) -> Outcome:
    started = time.time()
    cfg = ctx.ns.smtp
    if not cfg:
        return Outcome.failed(
            "no SMTP server configured: start the NS with --smtp HOST:PORT", started_at=started
        )
    message = EmailMessage()
    message["From"] = (
        cfg.get("sender") or f"taskfleet@{ctx.tokens.get('COMPUTERNAME', 'localhost')}"
    )
    message["To"] = ", ".join(ctx.params["to"])
    message["Subject"] = replace_tokens(str(ctx.params["subject"]), ctx.tokens)
    message["Message-ID"] = make_msgid(domain="taskfleet")
    message.set_content(replace_tokens(str(ctx.params.get("body", "")), ctx.tokens))
    report = str(ctx.params.get("attach_report", ""))
    if report:
        snapshot = await ctx.ns.db.latest_snapshot(report)
        if snapshot is None:
            return Outcome.failed(
                f"report {report!r} has no snapshot: run it first (run-report)", started_at=started
            )
        out = io.StringIO()
        writer = csv.writer(out)
        writer.writerow(snapshot["columns"])
        writer.writerows(snapshot["rows"])
        message.add_attachment(
            out.getvalue().encode(), maintype="text", subtype="csv", filename=f"{report}.csv"
        )
    try:
        await asyncio.to_thread(_send, cfg, message)
    except (OSError, smtplib.SMTPException) as exc:
        return Outcome.failed(f"sending mail failed: {exc}", started_at=started)
    return Outcome(InstanceState.SUCCEEDED, 0, str(message["Message-ID"]), "", started, time.time())
