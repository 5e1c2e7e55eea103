"""The demo's local mail sink: every message Airflow sends lands as an .eml file."""

from __future__ import annotations

import asyncio
import re
import threading
from collections import Counter
from pathlib import Path


class MailSink:
    """A local SMTP server (aiosmtpd) on a free loopback port that writes every message it gets to a folder.

    One ``NNNN-<what>.eml`` file per message, as received (``<what>``: digest kind, date and team, e.g.
    ``0005-daily-2026-10-06-finance``, else the subject), so any mail client opens them.
    Runs an asyncio loop in a daemon thread; use as a context manager.
    """

    def __init__(self, folder: Path, host: str = "127.0.0.1"):
        self.folder, self.host = Path(folder), host
        self.port: int | None = None
        self.messages: list[dict] = []
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None

    # aiosmtpd handler hook
    async def handle_DATA(self, server, session, envelope):
        import email
        from email.header import decode_header, make_header

        data = envelope.original_content or envelope.content
        if isinstance(data, str):
            data = data.encode("utf-8", "surrogateescape")
        msg = email.message_from_bytes(data)
        try:
            subject = str(make_header(decode_header(msg.get("Subject", ""))))
        except Exception:
            subject = str(msg.get("Subject", ""))
        digest = msg.get("X-Returnledger-Digest") or ""
        kind = (
            {"daily": "daily digest", "weekly": "weekly review"}.get(digest.split(":", 1)[0], "digest")
            if digest
            else "month-end notice"
            if "month-end" in subject
            else "failure alert"
            if " failed " in f"{subject} "
            else "other"
        )
        when = re.search(r"\d{4}-\d{2}-\d{2}", subject)
        label = (
            f"{digest.split(':', 1)[0]}-{when[0] if when else 'undated'}-{digest.split(':', 1)[-1]}"
            if digest
            else re.sub(r"[^A-Za-z0-9]+", "-", subject.removeprefix("[returnledger]")).strip("-")[:60]
        )
        with self._lock:
            n = len(self.messages) + 1
            path = self.folder / f"{n:04d}-{label or 'mail'}.eml"
            path.write_bytes(data)
            self.messages.append(
                {"path": str(path), "to": list(envelope.rcpt_tos), "subject": subject, "kind": kind}
            )
        return "250 Message accepted for delivery"

    def start(self) -> MailSink:
        from aiosmtpd.smtp import SMTP

        self.folder.mkdir(parents=True, exist_ok=True)
        loop = self._loop = asyncio.new_event_loop()
        ready, failed = threading.Event(), []

        def serve():
            asyncio.set_event_loop(loop)
            try:
                server = loop.run_until_complete(
                    loop.create_server(
                        lambda: SMTP(self, hostname="returnledger-demo", ident="returnledger demo mail sink"),
                        host=self.host,
                        port=0,
                    )
                )
                self.port = server.sockets[0].getsockname()[1]
            except Exception as e:
                failed.append(e)
                ready.set()
                return
            ready.set()
            try:
                loop.run_forever()
            finally:
                server.close()
                loop.close()

        self._thread = threading.Thread(target=serve, name="demo-mail-sink", daemon=True)
        self._thread.start()
        if not ready.wait(15) or failed:
            raise RuntimeError(f"the demo's mail sink did not start: {failed[0] if failed else 'timeout'}")
        return self

    def stop(self) -> None:
        if self._loop is not None and self._thread is not None and self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(5)

    def __enter__(self) -> MailSink:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def summary(self) -> dict:
        with self._lock:
            msgs = list(self.messages)
        return {
            "total": len(msgs),
            "by_kind": dict(sorted(Counter(m["kind"] for m in msgs).items())),
            "by_recipient": dict(sorted(Counter(to for m in msgs for to in m["to"]).items())),
        }
