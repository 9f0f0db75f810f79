"""Strict readers for settings taken from the environment.

Each helper fails at start-up with the variable's name and the value it could not read, so a
typo in a deployment shows up as one clear line instead of a surprise hours later.
"""

from __future__ import annotations

import ipaddress
import os

from django.core.exceptions import ImproperlyConfigured

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}


def _raw(name: str) -> str | None:
    value = os.environ.get(name)
    return None if value is None else value.strip()


def env_str(name: str, default: str = "") -> str:
    value = _raw(name)
    return default if value is None or value == "" else value


def env_bool(name: str, default: bool = False) -> bool:
    value = _raw(name)
    if value is None:
        return default
    lowered = value.lower()
    if lowered in _TRUE:
        return True
    if lowered in _FALSE:
        return False
    raise ImproperlyConfigured(f"{name}={value!r} is not a boolean (use 1/0, true/false, yes/no)")


def env_int(name: str, default: int, *, minimum: int | None = None) -> int:
    value = _raw(name)
    if value is None or value == "":
        return default
    try:
        number = int(value)
    except ValueError:
        raise ImproperlyConfigured(f"{name}={value!r} is not a whole number") from None
    if minimum is not None and number < minimum:
        raise ImproperlyConfigured(f"{name}={value!r} must be at least {minimum}")
    return number


def env_int_list(name: str, default: list[int], *, minimum: int = 0) -> list[int]:
    """A comma-separated list of whole numbers, such as ``WORKER_RETRY_DELAYS=5000,30000``."""
    value = _raw(name)
    if value is None or value == "":
        return default
    try:
        numbers = [int(part) for part in value.split(",") if part.strip()]
    except ValueError:
        raise ImproperlyConfigured(
            f"{name}={value!r} is not a comma-separated list of whole numbers"
        ) from None
    if not numbers or any(n < minimum for n in numbers):
        raise ImproperlyConfigured(f"{name}={value!r} needs numbers of at least {minimum}")
    return numbers


def env_list(name: str, default: list[str]) -> list[str]:
    value = _raw(name)
    if value is None or value == "":
        return default
    return [part.strip() for part in value.split(",") if part.strip()]


def env_networks(name: str, default: list[str]) -> list[str]:
    """A comma-separated list of IP addresses or networks (``127.0.0.1,10.0.0.0/8,::1``),
    each written back in its normal form."""
    networks = []
    for part in env_list(name, default):
        try:
            networks.append(str(ipaddress.ip_network(part, strict=False)))
        except ValueError:
            raise ImproperlyConfigured(
                f"{name}={_raw(name)!r}: {part!r} is not an IP address or network "
                "(such as 10.0.0.0/8)"
            ) from None
    return networks


def env_choice(name: str, default: str, choices: tuple[str, ...]) -> str:
    value = env_str(name, default)
    if value not in choices:
        raise ImproperlyConfigured(f"{name}={value!r} must be one of {', '.join(choices)}")
    return value
