"""Where the client finds its server and token.

`LINGOLOOP_URL` and `LINGOLOOP_TOKEN` in the environment win (scripts and CI need no login);
otherwise `lingoloop login` keeps them in `config.json` in the user's config folder
(platformdirs: `~/.config/lingoloop` on Linux; `LINGOLOOP_CONFIG_DIR` moves it), a file only
its owner may read. A file that others can read is refused rather than used: the token in it
is as good as the user's password.
"""

from __future__ import annotations

import contextlib
import json
import os
import stat
from dataclasses import dataclass
from pathlib import Path

import httpx
import platformdirs

LOCAL_HOSTS = {"localhost", "127.0.0.1", "::1", "[::1]"}


class ConfigError(Exception):
    """The configuration cannot be used; the message says how to fix it."""


@dataclass(frozen=True)
class Login:
    url: str
    token: str


def config_path() -> Path:
    folder = os.environ.get("LINGOLOOP_CONFIG_DIR") or platformdirs.user_config_dir("lingoloop")
    return Path(folder) / "config.json"


def server_url(raw: str) -> str:
    """The server's base URL from what a person typed: `host:8000` becomes
    `http://host:8000` on this machine and `https://…` anywhere else; no trailing slash."""
    text = raw.strip()
    if not text:
        raise ConfigError("The server's URL is empty.")
    if "://" not in text:
        host = text.split("/")[0].rsplit(":", 1)[0] if not text.startswith("[") else text
        local = host in LOCAL_HOSTS or text.startswith("[::1]")
        text = ("http://" if local else "https://") + text
    try:
        url = httpx.URL(text)
    except (httpx.InvalidURL, ValueError) as error:
        raise ConfigError(f"{raw!r} is not a URL: {error}") from None
    if url.scheme not in ("http", "https") or not url.host:
        raise ConfigError(f"{raw!r} is not an http:// or https:// URL of a server.")
    if url.query or url.fragment or url.userinfo:
        raise ConfigError(f"{raw!r}: give the server's address only, without ?, # or user@.")
    return str(url.copy_with(path=url.path.rstrip("/") or "")).rstrip("/")


def load() -> Login:
    """The login to use: the environment's, else the saved one (the environment's token alone
    overrides the saved token; its URL alone only takes the saved token to that same server)."""
    url, token = os.environ.get("LINGOLOOP_URL"), os.environ.get("LINGOLOOP_TOKEN")
    if not (url and token):
        saved = _read_saved()
        if saved and url and server_url(url) != saved.url:
            saved = None  # the saved token is for another server: never sent to this one
        url = url or (saved.url if saved else None)
        token = token or (saved.token if saved else None)
    if not url or not token:
        raise ConfigError(
            "Not logged in: run `lingoloop login URL`, or set LINGOLOOP_URL and LINGOLOOP_TOKEN."
        )
    return Login(server_url(url), token)


def _read_saved() -> Login | None:
    path = config_path()
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        return None
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise ConfigError(
            f"{path} can be read by other users, and it holds your token: "
            f"`chmod 600 {path}` (or log in again)."
        )
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        return Login(str(data["url"]), str(data["token"]))
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise ConfigError(
            f"{path} cannot be read ({error}): run `lingoloop login` again."
        ) from None


def save(login: Login) -> Path:
    """Write the login where `load` finds it: the folder 0700, the file 0600 from the moment it
    exists (written beside, then moved into place)."""
    path = config_path()
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(path.parent, 0o700)
    partial = path.with_name(path.name + ".partial")
    with contextlib.suppress(FileNotFoundError):
        partial.unlink()
    descriptor = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    with os.fdopen(descriptor, "w", encoding="utf-8") as out:
        json.dump({"url": login.url, "token": login.token}, out)
        out.write("\n")
    os.replace(partial, path)
    return path


def forget() -> bool:
    """Remove the saved login; False when there was none."""
    try:
        config_path().unlink()
    except FileNotFoundError:
        return False
    return True
