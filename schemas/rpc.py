"""Request/reply between the gateway and the CLIP consumers (``rpc.v1`` -> ``reply_to``).

The Kafka headers carry the routing: ``reply_to`` (the topic the gateway reads replies
from) and ``correlation_id`` (matches a reply to its request). Images travel as S3 URIs
(the gateway stages uploads), so messages stay small whatever the image size.
"""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from schemas.events import Label

UNKNOWN_LABEL_SET = "unknown_label_set"


class RpcRequest(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)

    kind: Literal["embed", "labels"]
    images: dict[str, str] = Field(default_factory=dict, description="Form key -> s3:// URI.")
    texts: dict[str, str] = Field(default_factory=dict, description="Form key -> text.")
    label_set: str | None = None
    top_k: int | None = Field(default=None, ge=1)
    deadline: datetime = Field(description="The gateway gives up then; later is skipped.")


class RpcError(BaseModel):
    code: str = Field(description="An ErrorCode value, or unknown_label_set.")
    message: str
    key: str | None = Field(default=None, description="The form key at fault, if one is.")


class RpcReply(BaseModel):
    model_config = ConfigDict(extra="ignore")

    model: str | None = None
    dim: int | None = None
    vectors: dict[str, list[float]] = Field(default_factory=dict)
    labels: dict[str, list[Label]] = Field(default_factory=dict)
    truncated: list[str] = Field(default_factory=list, description="Texts cut to the limit.")
    error: RpcError | None = None

    @classmethod
    def failed(cls, code: str, message: str, key: str | None = None) -> RpcReply:
        return cls(error=RpcError(code=code, message=message, key=key))
