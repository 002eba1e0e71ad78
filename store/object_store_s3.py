"""Checkpoint objects in an S3-compatible bucket (AWS S3, MinIO, GCS in interoperability mode),
through boto3.

A single PUT is atomic on S3: a writer killed mid-upload leaves no object (the server drops
the incomplete body, which the Content-MD5 header would also reject). Credentials come from
boto3's usual chain (AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY, a profile, an IAM role).
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Sequence
from typing import Any

from gradlab.store.object_store import ObjectMissingError, check_key

# DeleteObjects takes at most this many keys per request.
DELETE_BATCH = 1000


class S3ObjectStore:
    kind = "s3"

    def __init__(
        self,
        bucket: str,
        prefix: str = "",
        *,
        endpoint_url: str | None = None,
        region: str | None = None,
        client: Any | None = None,
    ):
        self.bucket = bucket
        self.prefix = prefix.strip("/") + "/" if prefix.strip("/") else ""
        if client is None:
            import boto3  # only a deployment that uses S3 needs it

            client = boto3.client("s3", endpoint_url=endpoint_url, region_name=region)
        self._client = client

    def _name(self, key: str) -> str:
        return self.prefix + check_key(key)

    def put(self, key: str, data: bytes) -> None:
        digest = base64.b64encode(hashlib.md5(data, usedforsecurity=False).digest()).decode()
        self._client.put_object(
            Bucket=self.bucket, Key=self._name(key), Body=data, ContentMD5=digest
        )

    def get(self, key: str) -> bytes:
        client = self._client
        try:
            response = client.get_object(Bucket=self.bucket, Key=self._name(key))
        except client.exceptions.NoSuchKey:
            raise ObjectMissingError(
                f"no object {key!r} in s3://{self.bucket}/{self.prefix}"
            ) from None
        return bytes(response["Body"].read())

    def keys(self, prefix: str) -> list[str]:
        paginator = self._client.get_paginator("list_objects_v2")
        found: list[str] = []
        for page in paginator.paginate(Bucket=self.bucket, Prefix=self.prefix + prefix):
            found.extend(item["Key"][len(self.prefix) :] for item in page.get("Contents", []))
        return sorted(found)

    def delete(self, keys: Sequence[str]) -> None:
        names = [self._name(key) for key in keys]
        for start in range(0, len(names), DELETE_BATCH):
            batch = names[start : start + DELETE_BATCH]
            self._client.delete_objects(
                Bucket=self.bucket,
                Delete={"Objects": [{"Key": name} for name in batch], "Quiet": True},
            )

    def delete_prefix(self, prefix: str) -> None:
        self.delete(self.keys(prefix))
