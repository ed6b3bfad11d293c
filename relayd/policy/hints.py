"""What to do about an upstream's reply or a transport problem: a table of hints; pure.

`hint_for(provider, reply, problem)` returns the advice a support engineer would give for a
reply such as Gmail's `535 5.7.8` or for a problem met before any reply (connection
refused, certificate not trusted, STARTTLS not offered), or None when relayd knows nothing
useful to add. `relayd test-upstream` prints it beside the server's exact words; operator
notices can use the same table.

The rows are checked in order, first match wins, so provider-specific rows come before the
general ones. Codes only one provider sends (Microsoft's 5.7.139, Google's 5.7.14) match
for any provider, so a `generic` upstream pointed at smtp.office365.com still gets them.
Sources: Google Workspace Admin Help "SMTP errors and codes" (support.google.com/a/answer/
3726730); Microsoft Learn "Email non-delivery reports and SMTP errors in Exchange Online"
and "Enable or disable SMTP AUTH in Exchange Online"; RFC 4954 section 6 (AUTH codes);
RFC 3207 (STARTTLS).
"""

from __future__ import annotations

import enum
from collections.abc import Iterable
from dataclasses import dataclass

from relayd.types import SmtpReply

GOOGLE = frozenset({"gmail", "google-workspace"})
MICROSOFT = frozenset({"microsoft365", "outlook", "nhsmail"})


class Problem(enum.StrEnum):
    """What went wrong before (or instead of) a server reply."""

    RESOLVE = "resolve"  # the host name does not resolve
    REFUSED = "connection_refused"  # TCP RST: nothing listens, or a firewall rejects
    TIMEOUT = "timeout"  # no answer: a firewall drops the packets, or a wrong port
    NO_GREETING = "no_greeting"  # connected, no 220: a plaintext client on an implicit-TLS port
    DISCONNECTED = "disconnected"  # the server closed the connection
    PLAINTEXT_PORT = "plaintext_port"  # implicit TLS to a port that speaks plain SMTP
    CERTIFICATE = "certificate"  # the server's certificate did not verify
    TLS = "tls"  # any other TLS handshake failure
    STARTTLS_NOT_OFFERED = "starttls_not_offered"
    AUTH_NOT_OFFERED = "auth_not_offered"  # no AUTH in EHLO, or no mechanism in common
    DIRECTORY = "directory"  # the capture directory is not writable
    OAUTH_GRANT = "oauth_grant"  # the token endpoint refused the refresh token (invalid_grant)
    OAUTH_CLIENT = "oauth_client"  # ... refused the client (invalid_client, unauthorized_client)
    OAUTH_REFUSED = "oauth_refused"  # ... any other refusal (invalid_scope, a file unreadable)
    OAUTH_ENDPOINT = "oauth_endpoint"  # the token endpoint could not be reached


@dataclass(frozen=True)
class Hint:
    """One row: every field that is set must match. Empty `providers`: any provider."""

    text: str
    providers: frozenset[str] = frozenset()
    problem: Problem | None = None
    codes: frozenset[int] = frozenset()
    enhanced: str = ""  # the enhanced status code, "5.7.8", or a class and subject "4.7.*"
    pattern: str = ""  # a case-insensitive substring of the reply text

    def matches(self, provider: str, reply: SmtpReply | None, problem: str | None) -> bool:
        if self.providers and provider not in self.providers:
            return False
        if self.problem is not None:
            return problem == self.problem
        return (
            reply is not None
            and (not self.codes or reply.code in self.codes)
            and _enhanced_matches(self.enhanced, reply.enhanced)
            and self.pattern.lower() in reply.message.lower()
        )


def _enhanced_matches(spec: str, code: str | None) -> bool:
    if not spec:
        return True
    if code is None:
        return False
    return code.startswith(spec[:-1]) if spec.endswith("*") else code == spec


def _reply(
    text: str,
    codes: Iterable[int] = (),
    enhanced: str = "",
    pattern: str = "",
    providers: Iterable[str] = (),
) -> Hint:
    return Hint(text, frozenset(providers), None, frozenset(codes), enhanced, pattern)


def _problem(problem: Problem, text: str) -> Hint:
    return Hint(text, problem=problem)


_OAUTH = 'OAuth2 (auth = "xoauth2"; README, "Microsoft 365 with OAuth2")'
_GOOGLE_2SV = (
    "Google wants an app password for SMTP, not the account's normal password: turn on "
    "2-Step Verification for the account, create an app password at "
    "https://myaccount.google.com/apppasswords and put it in password_file. On Google "
    "Workspace an administrator may first have to allow 2-Step Verification for the user."
)
_MICROSOFT_SMTP_AUTH = (
    "SMTP AUTH is disabled for the tenant or the mailbox: enable Authenticated SMTP for the "
    "mailbox (Microsoft 365 admin center > Users > Active users > the user > Mail > Manage "
    "email apps > Authenticated SMTP) and check the tenant allows it (Exchange admin center > "
    "Settings > Mail flow > 'Turn off SMTP AUTH protocol for your organization' unticked, or "
    "Set-TransportConfig -SmtpClientAuthenticationDisabled $false). Changes can take an hour."
)

_OAUTH_GRANT = (
    "The OAuth2 refresh token was refused: it expired (Microsoft: 90 days unused; Google: 7 "
    "days for an OAuth app still in 'Testing' status), was revoked, or the account's "
    "password changed. Make a new one (README, OAuth2), write it to refresh_token_file "
    "and run `relayd queue retry --all`; the mail waits queued until then."
)
_OAUTH_CLIENT = (
    "The token endpoint refused the OAuth2 client: check client_id, the secret in "
    "client_secret_file (Microsoft Entra client secrets expire; make a new one under the "
    "app registration's Certificates & secrets) and tenant_id."
)

REPLY_HINTS: tuple[Hint, ...] = (
    # -- relayd's own 535 when the OAuth2 token endpoint refuses (delivery/oauth.py) -------
    _reply(_OAUTH_GRANT, (535,), "5.7.8", ": invalid_grant"),
    _reply(_OAUTH_CLIENT, (535,), "5.7.8", "OAuth2 token request refused"),
    _reply(
        "relayd cannot use its OAuth2 files: client_secret_file and refresh_token_file must "
        "exist, be readable by the user relayd runs as, and not be empty.",
        (535,),
        "5.7.8",
        "OAuth2: ",
    ),
    # -- Google -------------------------------------------------------------------------------
    _reply(_GOOGLE_2SV, (535,), "5.7.8", providers=GOOGLE),
    _reply(_GOOGLE_2SV, (534,), "5.7.9", providers=GOOGLE),
    _reply(_GOOGLE_2SV, (534,), "5.7.9", "application-specific password"),
    _reply(
        "Google blocked the sign-in as unusual: sign in to the account in a web browser (from "
        "this network if you can), confirm on the security alert that it was you, then retry. "
        "If it keeps happening, use an app password.",
        (534,),
        "5.7.14",
    ),
    _reply(
        "Google refuses logins after too many failures: fix the app password, wait about an "
        "hour, then retry.",
        (454,),
        "4.7.0",
        providers=GOOGLE,
    ),
    _reply(
        "The account reached Google's daily sending limit; it resets within 24 hours and "
        "relayd keeps the mail queued. Lower rate_limits so it is not reached again.",
        (550,),
        "5.4.5",
        providers=GOOGLE,
    ),
    # -- Microsoft (Microsoft 365, Outlook.com, NHSmail) --------------------------------------
    _reply(
        "Microsoft Entra security defaults block SMTP AUTH for this tenant: an administrator "
        "must turn security defaults off (Entra admin center > Identity > Overview > "
        "Properties > Manage security defaults) or allow it with Conditional Access; or use "
        f"{_OAUTH}.",
        (535,),
        "5.7.139",
        "security defaults",
    ),
    _reply(_MICROSOFT_SMTP_AUTH, (535,), "5.7.139"),
    _reply(
        "Microsoft no longer accepts a password (basic authentication) for SMTP on this "
        f"account. The fix is {_OAUTH}; or send through another upstream, e.g. "
        'an Exchange Online connector (your tenant\'s MX host on port 25, auth = "none", '
        "allowed by IP address).",
        (550,),
        "5.7.30",
    ),
    _reply(
        "Outlook.com refused the sign-in: use the full address as username and an app "
        "password (turn on two-step verification, then account.microsoft.com > Security > "
        "Advanced security options > App passwords). If Microsoft has turned passwords off "
        f"for the account, it needs {_OAUTH}.",
        (535,),
        providers=("outlook",),
    ),
    _reply(
        "NHSmail refused the login: username is the full @nhs.net address and the password "
        "must be current (NHSmail passwords expire every 90 days unless your Local "
        "Administrator makes the account an application account).",
        (535,),
        providers=("nhsmail",),
    ),
    _reply(
        "Microsoft refused the username or password: username is the mailbox's full address "
        "(its UPN) and password_file holds its current password (an app password if the "
        "account uses multi-factor authentication). A mailbox with SMTP AUTH turned off can "
        f"also answer 5.7.3: {_MICROSOFT_SMTP_AUTH}",
        (535,),
        "5.7.3",
        providers=MICROSOFT,
    ),
    _reply(
        "Microsoft 365 does not accept mail from this tenant ('traffic not accepted from this "
        "IP'), usually a new tenant whose first mail looked like spam: check the account is "
        "not compromised, then an administrator asks Microsoft support to release the tenant.",
        (550,),
        "5.7.708",
    ),
    _reply(
        "The mailbox may not send as the message's From address: give the account 'Send As' "
        "permission on that address (Exchange admin center > Recipients > the address > "
        'Delegation), set from_policy = "rewrite" for the upstream, or route that sender '
        "through an upstream that owns it (senders). Its mail waits until max_lifetime.",
        (554, 550),
        "5.2.0",
        "SendAsDenied",
    ),
    _reply(
        "Microsoft blocked this account from sending (it sent mail that looked like spam): an "
        "administrator must check it is not compromised and release it in the Microsoft "
        "Defender portal (Restricted entities).",
        (550, 554),
        "5.1.8",
    ),
    # -- Other providers ----------------------------------------------------------------------
    _reply(
        "Yahoo blocked logins after too many failures: fix the app password and wait before "
        "retrying.",
        (535,),
        pattern="AUTH005",
    ),
    _reply(
        "Yahoo wants an app password for SMTP: Yahoo Account Security > Generate app password; "
        "username is the full Yahoo address.",
        (535,),
        providers=("yahoo",),
    ),
    _reply(
        "IONOS refused the login: username is the full email address and the password the "
        "mailbox's. IONOS accounts belong to one country; use that country's host "
        "(smtp.ionos.co.uk in the UK, smtp.ionos.de in Germany, smtp.ionos.com in the US).",
        (535,),
        providers=("ionos",),
    ),
    _reply(
        "GoDaddy refused the login: username is the full email address. GoDaddy also refuses "
        "logins once the day's SMTP relays (250) are used up; 'Microsoft 365 from GoDaddy' "
        'mailboxes need provider = "microsoft365".',
        (535,),
        providers=("godaddy",),
    ),
    # -- Any server -----------------------------------------------------------------------------
    _reply(
        'The server wants SMTP AUTH before it takes mail: set auth = "password" with username '
        "and password_file.",
        (530, 550),
        "5.7.57",
    ),
    _reply(
        'The server only talks after STARTTLS: set security = "starttls" (port 587).',
        (530,),
        pattern="STARTTLS",
    ),
    _reply(
        'The server wants encryption before AUTH: set security = "starttls" or "tls".',
        (538,),
    ),
    _reply(
        "The server refused the username or password: check username (usually the full "
        "address) and the secret in password_file or password_env; many providers want an "
        "app password for SMTP, not the account's normal one.",
        (535,),
    ),
    _reply(
        "The server refused this way of logging in: it may want an app password, or a "
        "stronger mechanism over TLS.",
        (534,),
    ),
    _reply(
        "The provider is throttling this account: relayd pauses the upstream and retries. "
        "Lower rate_limits if this happens often.",
        (421,),
        "4.7.*",
    ),
)

_PORTS = '587 goes with security = "starttls", 465 with "tls"'

PROBLEM_HINTS: tuple[Hint, ...] = (
    _problem(
        Problem.RESOLVE,
        "The host name does not resolve: check host for typos and that this machine's DNS "
        "works (getent hosts HOST).",
    ),
    _problem(
        Problem.REFUSED,
        f"Nothing accepted the connection: check host and port ({_PORTS}). A firewall here, "
        "on the network or at the hosting provider may be rejecting outbound SMTP.",
    ),
    _problem(
        Problem.TIMEOUT,
        "No answer: the port is probably blocked by a firewall (hosting providers often block "
        f"outbound 25, 465 and 587 until asked), or it is the wrong port for this encryption "
        f"({_PORTS}).",
    ),
    _problem(
        Problem.NO_GREETING,
        "Connected, but the server sent no greeting: this is usually an implicit-TLS port "
        '(465) used with security = "starttls"; set security = "tls", or use port 587.',
    ),
    _problem(
        Problem.PLAINTEXT_PORT,
        'The server answered in plain text, not TLS: security = "tls" needs the implicit-TLS '
        'port (465); port 587 (and 25) expect security = "starttls".',
    ),
    _problem(
        Problem.CERTIFICATE,
        "The server's certificate could not be verified: host must be a name the certificate "
        "covers (the provider's host name, not an IP address), this machine's CA certificates "
        "must be current (ca-certificates) and nothing may intercept TLS. For a server with a "
        "private CA set tls_ca_file; tls_verify = false only on a link you trust.",
    ),
    _problem(
        Problem.TLS,
        "The TLS handshake failed: the server may offer only TLS versions or ciphers this "
        "system refuses, or something on the network interferes with TLS.",
    ),
    _problem(
        Problem.STARTTLS_NOT_OFFERED,
        "The server did not offer STARTTLS, so relayd will not send the password: check the "
        f"port ({_PORTS}). A firewall that inspects SMTP can strip STARTTLS; so can a server "
        "that is not the provider's.",
    ),
    _problem(
        Problem.AUTH_NOT_OFFERED,
        "The server offers no AUTH mechanism relayd can use on this connection: check host "
        'and port (port 25 is often server-to-server only; use 587), or set auth = "none" if '
        "this server relays by IP address.",
    ),
    _problem(
        Problem.DISCONNECTED,
        "The server closed the connection: it may refuse this machine's IP address, or the "
        f"port and encryption do not match ({_PORTS}).",
    ),
    _problem(Problem.OAUTH_GRANT, _OAUTH_GRANT),
    _problem(Problem.OAUTH_CLIENT, _OAUTH_CLIENT),
    _problem(
        Problem.OAUTH_REFUSED,
        "The OAuth2 token request was refused: check the app registration's API permissions "
        "(Microsoft: SMTP.Send, or SMTP.SendAsApp with admin consent for client credentials; "
        "Google: the https://mail.google.com/ scope) and the files relayd reads.",
    ),
    _problem(
        Problem.OAUTH_ENDPOINT,
        "relayd could not get an answer from the OAuth2 token endpoint: check this machine "
        "reaches it over HTTPS (a proxy needs HTTPS_PROXY in relayd's environment); relayd "
        "retries.",
    ),
    _problem(
        Problem.DIRECTORY,
        "relayd cannot write there: create the directory and make it writable by the user "
        "relayd runs as (under systemd, also list it in ReadWritePaths=).",
    ),
)


def hint_for(provider: str, reply: SmtpReply | None, problem: str | None) -> str | None:
    """The advice for `problem` (a Problem value) or, failing that, for `reply`; else None."""
    if problem is not None:
        for row in PROBLEM_HINTS:
            if row.matches(provider, None, problem):
                return row.text
    if reply is not None and not reply.is_success:
        for row in REPLY_HINTS:
            if row.matches(provider, reply, None):
                return row.text
    return None
