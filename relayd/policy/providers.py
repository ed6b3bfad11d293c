"""Provider presets and what to do about a provider's replies; pure data and lookups, no I/O.

A preset is what `provider = "..."` brings to an `[upstreams.NAME]` table: host, security,
auth kind, default rate limits (from the provider's published sending limits, the source
beside each), and which hints apply. Every value can be overridden in the file; config/model.py
fills only what the table leaves unset and remembers which values came from here.

The hints (policy/hints.py) turn a reply such as `535 5.7.8` or a transport problem such as
"connection refused" into the sentence a support engineer would say; `hint_for` is the
entry point and is re-exported here so callers need one import.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Literal

from relayd.policy.hints import Problem, hint_for

__all__ = [
    "DEFAULT_PORTS",
    "IMAP_HOSTS",
    "PRESETS",
    "Preset",
    "Problem",
    "default_port",
    "hint_for",
    "token_url_for",
]

Security = Literal["starttls", "tls", "none"]
AuthKind = Literal["password", "xoauth2", "none"]
Count = Literal["messages", "recipients"]

DEFAULT_PORTS: dict[Security, int] = {"starttls": 587, "tls": 465, "none": 25}


@dataclass(frozen=True)
class Preset:
    """What a provider name fills in; None means "the user must say" (or the model default)."""

    name: str
    host: str | None = None
    security: Security | None = "starttls"
    auth: AuthKind = "password"
    rate_limits: tuple[str, ...] = ()
    count: Count | None = None
    delivers_to_directory: bool = False
    # OAuth2 (auth = "xoauth2"): the token endpoint ("{tenant}" is filled from tenant_id),
    # the scope a refresh-token grant asks for, the scope of Microsoft's client-credentials
    # grant, and how long a refresh token may go unused before the provider expires it.
    token_url: str | None = None
    oauth_scope: str | None = None
    app_scope: str | None = None
    refresh_token_idle_days: int | None = None
    # The provider refuses (or rewrites) an envelope sender other than the account: relayd
    # sends MAIL FROM:<username> itself, so bounces reach the account, not a 5xx.
    envelope_from_account: bool = False

    def defaults(self) -> dict[str, Any]:
        """The upstream keys this preset sets, with their values (unset ones are absent)."""
        values = {
            "host": self.host,
            "security": self.security,
            "auth": self.auth,
            "rate_limits": list(self.rate_limits) or None,
            "count": self.count,
        }
        return {key: value for key, value in values.items() if value is not None}


# Google's OAuth2 token endpoint (developers.google.com/identity/protocols/oauth2/web-server,
# "Refreshing an access token"); SMTP needs the https://mail.google.com/ scope, granted when
# the refresh token was made, so a refresh asks for none. Google does not rotate refresh
# tokens; one of an OAuth app in "Testing" status expires after 7 days (publish the app).
_GOOGLE_ENDPOINT = "https://oauth2.googleapis.com/token"
# Microsoft identity platform (learn.microsoft.com, "Authenticate an IMAP, POP or SMTP
# connection using OAuth"): v2.0 token endpoint per tenant ("common" for any work account,
# "consumers" for Outlook.com); delegated scope SMTP.Send (+ offline_access for a refresh
# token); client credentials use the .default scope of outlook.office365.com. Refresh tokens
# rotate and expire after 90 days unused ("Refresh tokens in the Microsoft identity platform").
_MICROSOFT_OAUTH: dict[str, Any] = {
    "oauth_scope": "https://outlook.office.com/SMTP.Send offline_access",
    "app_scope": "https://outlook.office365.com/.default",
    "refresh_token_idle_days": 90,
}
_MICROSOFT_ENDPOINT = "https://login.microsoftonline.com/{tenant:%s}/oauth2/v2.0/token"

# Published limits are per rolling 24 hours unless noted. Where a provider counts recipients
# (one message to 5 people uses 5), the preset sets count = "recipients"; counting recipients
# also honours a per-message limit, only more strictly. A per-minute ceiling the provider
# does not publish is marked "smoothing": it keeps a burst from looking like spam, which is
# what gets accounts blocked (DESIGN.md); business applications commonly use "3 a minute".
PRESETS: dict[str, Preset] = {
    # Gmail Help, "Limits for sending & getting mail" (support.google.com/mail/answer/22839):
    # personal accounts about 500 recipients a day. 3/minute: smoothing. Password auth means a
    # Google app password (2-Step Verification on), never the account password.
    "gmail": Preset(
        name="gmail",
        host="smtp.gmail.com",
        rate_limits=("3/minute", "500/day"),
        count="recipients",
        envelope_from_account=True,  # Gmail rewrites MAIL FROM to the account anyway
        token_url=_GOOGLE_ENDPOINT,
    ),
    # Google Workspace Admin Help, "Gmail sending limits in Google Workspace"
    # (support.google.com/a/answer/166852): 2,000 messages a day (500 for trial accounts),
    # 10,000 total recipients a day, 100 recipients per message over SMTP. Counted in
    # messages; the 10,000-recipient cap binds only above 5 recipients per message on
    # average (set count = "recipients" and "10000/day" if yours do). 3/minute: smoothing.
    "google-workspace": Preset(
        name="google-workspace",
        host="smtp.gmail.com",
        rate_limits=("3/minute", "2000/day"),
        count="messages",
        envelope_from_account=True,
        token_url=_GOOGLE_ENDPOINT,
    ),
    # Microsoft Learn, "Exchange Online limits", sending limits: message rate limit (SMTP
    # client submission) 30 messages a minute; recipient rate limit 10,000 recipients a day.
    # Counting recipients honours both. The default auth is OAuth2: Microsoft is retiring
    # password (basic) AUTH for SMTP client submission (then 550 5.7.30). Exchange Online
    # refuses a MAIL FROM the mailbox may not send as (554 5.2.0 SendAsDenied).
    "microsoft365": Preset(
        name="microsoft365",
        host="smtp.office365.com",
        auth="xoauth2",
        rate_limits=("30/minute", "10000/day"),
        count="recipients",
        envelope_from_account=True,
        token_url=_MICROSOFT_ENDPOINT % "common",
        **_MICROSOFT_OAUTH,
    ),
    # Outlook.com / Hotmail / Live personal accounts. Microsoft Support, "Sending limits in
    # Outlook.com": limits depend on the account's age and standing and are not all
    # published; 300 recipients a day for free accounts is the commonly quoted figure
    # (UNCERTAIN: new accounts get less, Microsoft 365 subscribers more). 3/minute: smoothing.
    "outlook": Preset(
        name="outlook",
        host="smtp-mail.outlook.com",
        rate_limits=("3/minute", "300/day"),
        count="recipients",
        envelope_from_account=True,
        token_url=_MICROSOFT_ENDPOINT % "consumers",
        **_MICROSOFT_OAUTH,
    ),
    # Yahoo Help SLN17518, "SMTP sending limits" (Yahoo Business Mail): 500 a day, 100
    # recipients per message, each recipient counts as one (UNCERTAIN for free Yahoo Mail,
    # which publishes no figure; the same 500 is widely reported). Password = a Yahoo app
    # password. Implicit TLS on 465 (587 with STARTTLS also works). 3/minute: smoothing.
    "yahoo": Preset(
        name="yahoo",
        host="smtp.mail.yahoo.com",
        security="tls",
        rate_limits=("3/minute", "500/day"),
        count="recipients",
    ),
    # IONOS Help, "What are the mass mailing limits?": Mail Basic / Mail Business, per hour
    # by contract age: 50 (first week), 100 (8-14 days), 400 (15-30 days), then 500
    # (ionos.co.uk; ionos.com gives 5,000). The German page counts recipients. New accounts
    # should set ["50/hour"]. The host is per country: smtp.ionos.com (US), smtp.ionos.co.uk
    # (UK), smtp.ionos.de (Germany), smtp.ionos.fr, smtp.ionos.es, ... -- set host to yours.
    "ionos": Preset(
        name="ionos",
        host="smtp.ionos.com",
        rate_limits=("500/hour",),
        count="recipients",
    ),
    # GoDaddy Help, "Managing your email account SMTP relays": Workspace Email allows 250
    # SMTP relays a day (each recipient is one relay, rolling 24 hours). Implicit TLS on 465.
    # GoDaddy's "Microsoft 365 from GoDaddy" mailboxes use provider = "microsoft365".
    "godaddy": Preset(
        name="godaddy",
        host="smtpout.secureserver.net",
        security="tls",
        rate_limits=("250/day",),
        count="recipients",
    ),
    # NHS Digital, "Applications Guide for NHSmail": SMTP submission to send.nhs.net on 587
    # with TLS and AUTH (full NHSmail address as username; From must be that address).
    # NHSmail runs on Exchange Online, whose limits the guide refers to: 30 messages a
    # minute, 10,000 recipients a day (UNCERTAIN whether NHSmail sets lower ones).
    "nhsmail": Preset(
        name="nhsmail",
        host="send.nhs.net",
        rate_limits=("30/minute", "10000/day"),
        count="recipients",
        envelope_from_account=True,
    ),
    "generic": Preset(name="generic"),
    "directory": Preset(name="directory", security=None, auth="none", delivers_to_directory=True),
}


_TENANT = re.compile(r"\{tenant(?::([A-Za-z0-9.-]*))?\}")


def token_url_for(template: str, tenant_id: str | None) -> str:
    """A preset's token URL for a tenant: "{tenant:common}" becomes tenant_id, or "common"."""
    return _TENANT.sub(lambda match: tenant_id or match.group(1) or "common", template)


def default_port(security: Security) -> int:
    """starttls -> 587 (RFC 6409 submission), tls -> 465 (RFC 8314), none -> 25."""
    return DEFAULT_PORTS[security]


# [bounces.imap] provider = "...": the provider's IMAP server (TLS, port 993), whose inbox
# receives the account's late bounces. From each provider's published IMAP settings.
IMAP_HOSTS: dict[str, str] = {
    "gmail": "imap.gmail.com",
    "google-workspace": "imap.gmail.com",
    "microsoft365": "outlook.office365.com",
    "outlook": "outlook.office365.com",
    "yahoo": "imap.mail.yahoo.com",
    "ionos": "imap.ionos.com",
    "godaddy": "imap.secureserver.net",
}
