"""The account keys of an [upstreams.NAME] table: OAuth2 (auth = "xoauth2") and the
account address that from_policy = "rewrite" puts in From; validated at load.

config.UpstreamConfig inherits these fields, so the file stays flat (`client_id = ...` beside
`username = ...`). OAuth2 has two grants (RFC 6749):

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
from typing import Any

from pydantic import BaseModel, ConfigDict, model_validator

from relayd.config.text import KeyedValueError
from relayd.config.values import ConfPath, is_loopback_host
from relayd.policy.providers import PRESETS, token_url_for

_OAUTH_KEYS = ("client_id", "client_secret_file", "refresh_token_file", "tenant_id")


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


class AccountFields(BaseModel):
    """The OAuth2 keys; UpstreamConfig adds everything else."""

    model_config = ConfigDict(extra="forbid", frozen=True, hide_input_in_errors=True)

    client_id: str | None = None
    client_secret_file: ConfPath | None = None
    refresh_token_file: ConfPath | None = None
    tenant_id: str | None = None
    token_url: str | None = None
    oauth_scope: str | None = None

    @model_validator(mode="before")
    @classmethod
    def _oauth_preset(cls, data: Any) -> Any:
        """Fill token_url and oauth_scope from the preset, for auth = "xoauth2" only."""
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

    @model_validator(mode="after")
    def _check_account(self) -> AccountFields:
        username = getattr(self, "username", None) or ""
        if getattr(self, "from_policy", None) == "rewrite" and "@" not in username:
            raise KeyedValueError(
                ("from_policy",),
                '"rewrite" puts the account address in From: it needs username = "ADDRESS"',
            )
        if getattr(self, "auth", None) != "xoauth2":
            for key in _OAUTH_KEYS:
                if getattr(self, key) is not None:
                    raise KeyedValueError((key,), 'is only used with auth = "xoauth2"')
            return self
        self._check_oauth()
        return self

    def _check_oauth(self) -> None:
        if self.token_url is None:
            raise KeyedValueError(
                ("token_url",), "the provider has no OAuth2 preset; set token_url (https://...)"
            )
        _check_token_url(self.token_url)
        if not self.client_id:
            raise KeyedValueError(("client_id",), 'auth = "xoauth2" needs client_id')
        if self.refresh_token_file is None and (
            self.tenant_id is None or self.client_secret_file is None
        ):
            raise KeyedValueError(
                ("refresh_token_file",),
                'auth = "xoauth2" needs refresh_token_file (with client_id), or for '
                "Microsoft's client-credentials flow tenant_id and client_secret_file",
            )
        if self.refresh_token_file is None and not self.oauth_scope:
            raise KeyedValueError(("oauth_scope",), "the client-credentials flow needs a scope")
        for key in ("client_secret_file", "refresh_token_file"):
            path = getattr(self, key)
            if path is not None and not path.is_file():
                raise KeyedValueError((key,), f"{path} is not a file")
