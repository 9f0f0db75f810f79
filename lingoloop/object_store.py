"""The STORAGES entry of an S3-compatible audio store (AUDIO_STORAGE=s3): django-storages'
S3Storage, set up to fail fast when the store is away. A function, so that tests build the
same entry for the store they start."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlparse

from django.core.exceptions import ImproperlyConfigured


def s3_storage(
    *,
    bucket: str,
    endpoint_url: str = "",
    region: str = "us-east-1",
    prefix: str = "",
    access_key: str = "",
    secret_key: str = "",
    addressing_style: str = "virtual",
    url_seconds: int = 300,
    timeout_seconds: int = 10,
) -> dict[str, Any]:
    try:
        from botocore.config import Config
    except ImportError:
        raise ImproperlyConfigured(
            "AUDIO_STORAGE=s3 needs boto3 and django-storages: pip install 'lingoloop[s3]'"
        ) from None
    return {
        "BACKEND": "storages.backends.s3.S3Storage",
        "OPTIONS": {
            "bucket_name": bucket,
            "endpoint_url": endpoint_url or None,
            "region_name": region,
            # None: boto3 finds credentials its own way (AWS_ACCESS_KEY_ID…, an instance role).
            "access_key": access_key or None,
            "secret_key": secret_key or None,
            "location": prefix,
            "addressing_style": addressing_style,
            "signature_version": "s3v4",
            "querystring_auth": True,
            "querystring_expire": url_seconds,
            # Names are fresh UUIDs: no HEAD request before each write to avoid a clash.
            "file_overwrite": True,
            "default_acl": None,
            "client_config": Config(
                signature_version="s3v4",
                connect_timeout=timeout_seconds,
                read_timeout=timeout_seconds,
                retries={"max_attempts": 2, "mode": "standard"},
                s3={"addressing_style": addressing_style},
            ),
        },
    }


def origins(endpoint_url: str, addressing_style: str) -> list[str]:
    """Where the store's signed URLs point, for the pages' Content-Security-Policy."""
    if not endpoint_url:
        return ["https://*.amazonaws.com"]
    endpoint = urlparse(endpoint_url)
    found = [f"{endpoint.scheme}://{endpoint.netloc}"]
    if addressing_style == "virtual":
        found.append(f"{endpoint.scheme}://*.{endpoint.netloc}")
    return found
