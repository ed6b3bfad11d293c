"""The account keys of an [upstreams.NAME] table: OAuth2 (auth = "xoauth2") and the
account address that from_policy = "rewrite" puts in From; validated at load.

The fields are UpstreamConfig's (config/upstream.py), so the file stays flat (`client_id = ...`
beside `username = ...`); the rules about them are here. OAuth2 has two grants (RFC 6749):

- refresh token (section 6; Google and Microsoft): client_id, refresh_token_file, and
  client_secret_file where the OAuth client has a secret (Google's always do);
- client credentials (section 4.4; Microsoft only, an app registration allowed SMTP.SendAsApp
  for the mailbox): client_id, tenant_id, client_secret_file, no refresh token.

token_url and oauth_scope come from the preset when the table leaves them unset (and are
marked so in check-config). The secret files are read when a token is requested, not here:
the refresh token changes (Microsoft rotates it) and an operator may replace either file
without a restart. Here they only have to exist.
"""

from __future__ import annotations

import urllib.parse
from pathlib import Path
from typing import Any, Protocol

from relayd.config.text import KeyedValueError
from relayd.config.values import is_loopback_host
from relayd.policy.providers import PRESETS, token_url_for


def _check_token_url(url: str) -> None:
    """https only: the request carries the client secret and the refresh token. Plain http
    is allowed to a loopback address (a local token proxy, and the tests)."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme == "https" and parts.hostname:
        return
    if parts.scheme == "http" and is_loopback_host(parts.hostname or ""):
        return
    raise KeyedValueError(
        ("token_url",), f'"{url}" is not an https:// URL (plain http only to a loopback address)'
    )


class AccountKeys(Protocol):
    """What the account rules read of an [upstreams.NAME] table."""

    @property
    def username(self) -> str | None: ...
    @property
    def auth(self) -> str | None: ...
    @property
    def from_policy(self) -> str: ...
    @property
    def client_id(self) -> str | None: ...
    @property
    def client_secret_file(self) -> Path | None: ...
    @property
    def refresh_token_file(self) -> Path | None: ...
    @property
    def tenant_id(self) -> str | None: ...
    @property
    def token_url(self) -> str | None: ...
    @property
    def oauth_scope(self) -> str | None: ...


def fill_oauth_preset(data: Any) -> Any:
    """The raw table with token_url and oauth_scope filled from the preset, for auth =
    "xoauth2" only (and marked in preset_fields, so check-config says where they came from)."""
    provider = data.get("provider", "generic") if isinstance(data, dict) else None
    preset = PRESETS.get(provider) if isinstance(provider, str) else None
    if preset is None or (data.get("auth") or preset.auth) != "xoauth2":
        return data
    filled: dict[str, str] = {}
    if data.get("token_url") is None and preset.token_url:
        filled["token_url"] = token_url_for(preset.token_url, data.get("tenant_id"))
    scope = preset.oauth_scope if data.get("refresh_token_file") else preset.app_scope
    if data.get("oauth_scope") is None and scope:
        filled["oauth_scope"] = scope
    marked = frozenset(data.get("preset_fields", ())) | set(filled)
    return {**data, **filled, "preset_fields": marked} if filled else data


def check_account(keys: AccountKeys) -> None:
    """The rewrite address, and the OAuth2 keys: only with xoauth2, and complete there."""
    if keys.from_policy == "rewrite" and "@" not in (keys.username or ""):
        raise KeyedValueError(
            ("from_policy",),
            '"rewrite" puts the account address in From: it needs username = "ADDRESS"',
        )
    if keys.auth != "xoauth2":
        oauth = {
            "client_id": keys.client_id,
            "client_secret_file": keys.client_secret_file,
            "refresh_token_file": keys.refresh_token_file,
            "tenant_id": keys.tenant_id,
        }
        for key, value in oauth.items():
            if value is not None:
                raise KeyedValueError((key,), 'is only used with auth = "xoauth2"')
        return
    _check_oauth(keys)


def _check_oauth(keys: AccountKeys) -> None:
    if keys.token_url is None:
        raise KeyedValueError(
            ("token_url",), "the provider has no OAuth2 preset; set token_url (https://...)"
        )
    _check_token_url(keys.token_url)
    if not keys.client_id:
        raise KeyedValueError(("client_id",), 'auth = "xoauth2" needs client_id')
    if keys.refresh_token_file is None and (
        keys.tenant_id is None or keys.client_secret_file is None
    ):
        raise KeyedValueError(
            ("refresh_token_file",),
            'auth = "xoauth2" needs refresh_token_file (with client_id), or for '
            "Microsoft's client-credentials flow tenant_id and client_secret_file",
        )
    if keys.refresh_token_file is None and not keys.oauth_scope:
        raise KeyedValueError(("oauth_scope",), "the client-credentials flow needs a scope")
    secret_files = {
        "client_secret_file": keys.client_secret_file,
        "refresh_token_file": keys.refresh_token_file,
    }
    for key, path in secret_files.items():
        if path is not None and not path.is_file():
            raise KeyedValueError((key,), f"{path} is not a file")
