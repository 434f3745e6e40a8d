"""Vector and face ids, without the model stack: the gateway and the CLI build them too.

``consumers.tasks`` re-exports these (its modules import torch through the encoders).
"""

from __future__ import annotations


def vector_id(image_id: str, tenant: str) -> str:
    """The primary key: the image id, scoped by tenant so tenants never overwrite each other."""
    return f"{tenant}/{image_id}" if tenant else image_id


def strip_tenant(key: str, tenant: str) -> str:
    return key.removeprefix(f"{tenant}/") if tenant else key


def face_id(image_id: str, n: int) -> str:
    return f"{image_id}#{n}"


def image_of(face_key: str) -> str:
    """The image id inside a face id (image ids may contain '#'; n never does)."""
    return face_key.rpartition("#")[0]
