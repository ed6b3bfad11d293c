"""Which session an upstream gets: SMTP (delivery/session.py) or the directory capture
(delivery/capture.py), wrapped in the upstream's from_policy and envelope-sender rule; and
the daemon's session factory, which shares per daemon what the sessions share (OAuth2
tokens, the queue ids whose final dot got no reply)."""

from __future__ import annotations

from dataclasses import replace

from relayd.clock import Clock
from relayd.config.model import UpstreamConfig
from relayd.delivery.capture import DirectorySession
from relayd.delivery.oauth import TokenSource, TokenSources
from relayd.delivery.session import Session, SmtpSession
from relayd.policy.from_policy import apply_from_policy, envelope_sender
from relayd.policy.providers import PRESETS
from relayd.types import NoticeHook, Outgoing, SendResult


def open_session(
    upstream: UpstreamConfig,
    local_hostname: str,
    tokens: TokenSource | None,
    clock: Clock,
    reply_lost: set[str] | None = None,
) -> Session:
    """The session kind the upstream's provider calls for, with its from_policy.

    An xoauth2 upstream takes its access tokens from `tokens` (SessionOpener shares one
    source among an upstream's connections); `reply_lost` is SmtpSession's.
    """
    session: Session
    if upstream.provider == "directory":
        assert upstream.path is not None
        session = DirectorySession(upstream.path, upstream.name, clock)
    else:
        session = SmtpSession(upstream, local_hostname, tokens, reply_lost)
    return PolicySession(session, upstream) if PolicySession.applies(upstream) else session


class SessionOpener:
    """A session factory whose xoauth2 upstreams share one TokenSource each; `tokens.watch()`
    is the expiry watch, `notices` gets refused grants and expiring tokens."""

    def __init__(
        self, upstreams: list[UpstreamConfig], clock: Clock, notices: NoticeHook | None = None
    ) -> None:
        self.tokens = TokenSources(upstreams, clock, notices)
        self.clock = clock
        self.reply_lost: set[str] = set()

    def __call__(self, upstream: UpstreamConfig, local_hostname: str) -> Session:
        tokens = self.tokens.get(upstream)
        return open_session(upstream, local_hostname, tokens, self.clock, self.reply_lost)


class PolicySession:
    """The upstream's from_policy (policy/from_policy.py) and envelope-sender rule of a session."""

    def __init__(self, inner: Session, upstream: UpstreamConfig) -> None:
        self.inner = inner
        self.policy = upstream.from_policy
        username = upstream.username or ""
        self.account = username if "@" in username else None
        preset = PRESETS[upstream.provider]
        self.use_account = preset.envelope_from_account or self.policy == "rewrite"

    @staticmethod
    def applies(upstream: UpstreamConfig) -> bool:
        preset = PRESETS[upstream.provider]
        return upstream.from_policy != "keep" or preset.envelope_from_account

    async def send(self, message: Outgoing) -> SendResult:
        return await self.inner.send(
            replace(
                message,
                mail_from=envelope_sender(message.mail_from, self.account, self.use_account),
                body=apply_from_policy(message.body, self.policy, self.account),
            )
        )

    async def close(self) -> None:
        await self.inner.close()
