"""Delivery of alert messages: e-mail over SMTP (stdlib `smtplib` in a worker thread) and webhooks
(JSON POSTs with aiohttp).

Owns the message's two renderings (a plain-text mail and a JSON document) and reports which
channels failed; the caller decides what a failure means. One mail per message goes to all its
recipients (one envelope, every recipient in RCPT TO). Must not know conditions or state.
"""

from __future__ import annotations

import asyncio
import logging
import smtplib
from dataclasses import dataclass, field
from email.message import EmailMessage
from email.utils import formatdate, make_msgid
from typing import Any

import aiohttp

from server.alerts.settings import AlertSettings

log = logging.getLogger(__name__)
SMTP_TIMEOUT = 30.0
WEBHOOK_TIMEOUT = aiohttp.ClientTimeout(total=15)


@dataclass(frozen=True, slots=True)
class Message:
    event: str  # "alert" | "repeat" | "resolved" | "digest"
    subject: str
    text: str
    payload: dict[str, Any]


@dataclass
class Outcome:
    delivered: int = 0  # channels that accepted the message
    errors: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """Somebody heard it, or nobody was configured to: either way, move on."""
        return self.delivered > 0 or not self.errors


class Notifier:
    def __init__(self, settings: AlertSettings) -> None:
        self.settings = settings

    async def send(
        self, message: Message, recipients: tuple[str, ...], webhooks: tuple[str, ...]
    ) -> Outcome:
        outcome = Outcome()
        if recipients and self.settings.smtp_host:
            await self._mail(message, recipients, outcome)
        elif recipients:
            log.warning("alert for %s not mailed: no smtp_host in [alerts]", recipients)
        for url in webhooks:
            await self._webhook(message, url, outcome)
        return outcome

    async def _mail(self, message: Message, recipients: tuple[str, ...], outcome: Outcome) -> None:
        try:
            await asyncio.to_thread(self._smtp_send, message, recipients)
            outcome.delivered += 1
        except (TimeoutError, smtplib.SMTPException, OSError) as e:
            outcome.errors.append(f"smtp {self.settings.smtp_host}: {type(e).__name__}: {e}")
            log.error("mail to %s failed: %s", ", ".join(recipients), e)

    def _smtp_send(self, message: Message, recipients: tuple[str, ...]) -> None:
        s = self.settings
        mail = EmailMessage()
        mail["From"], mail["To"] = s.sender, ", ".join(recipients)
        mail["Subject"], mail["Date"] = message.subject, formatdate(localtime=True)
        mail["Message-ID"] = make_msgid(domain="dicomvault")
        mail["X-Dicomvault-Event"] = message.event
        mail.set_content(message.text)
        assert s.smtp_host is not None
        with smtplib.SMTP(s.smtp_host, s.smtp_port, timeout=SMTP_TIMEOUT) as smtp:
            if s.smtp_starttls:
                smtp.starttls()
            if s.smtp_user:
                smtp.login(s.smtp_user, s.smtp_password or "")
            smtp.send_message(mail, from_addr=s.sender, to_addrs=list(recipients))

    async def _webhook(self, message: Message, url: str, outcome: Outcome) -> None:
        try:
            async with (
                aiohttp.ClientSession(timeout=WEBHOOK_TIMEOUT) as session,
                session.post(url, json=message.payload) as resp,
            ):
                if resp.status >= 300:
                    raise aiohttp.ClientResponseError(
                        resp.request_info, (), status=resp.status, message=resp.reason or ""
                    )
            outcome.delivered += 1
        except (aiohttp.ClientError, TimeoutError, OSError) as e:
            outcome.errors.append(f"webhook {url}: {type(e).__name__}: {e}")
            log.error("webhook %s failed: %s", url, e)
