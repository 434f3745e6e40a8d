"""An image's bytes from S3, read only where the staging rules let its tenant read them."""

from __future__ import annotations

from consumers.pipeline.s3 import S3Store
from consumers.vectorstore.keys import StagingAreas


async def fetch_staged(
    s3: S3Store, staging: StagingAreas | None, bucket: str, key: str, tenant: str | None
) -> bytes:
    """The object's bytes; ``ItemError`` where ``tenant`` may not read a staged upload
    (``None``: an encoder request, which may read only the gateway's RPC staging)."""
    if staging is not None:
        staging.check(bucket, key, tenant)
    return await s3.get(bucket, key)
