"""What the gateway's endpoints do, apart from HTTP: limits, staging, RPC, submission."""

from __future__ import annotations

import uuid

from pydantic import ValidationError
from starlette.datastructures import UploadFile

from consumers.config.settings import Settings
from consumers.gateway.errors import ApiError, ApiErrorCode
from consumers.gateway.forms import Parts, read_image
from consumers.gateway.runtime import GatewayRuntime
from consumers.vectorstore.keys import rpc_key, staged_key
from schemas.events import ImageSubmitted, TaskResult
from schemas.rpc import RpcReply, RpcRequest

FACE = "face"  # the task a key needs the faces scope for


class Gateway:
    """The endpoints' logic, with the settings and runtime they share."""

    def __init__(self, settings: Settings, runtime: GatewayRuntime) -> None:
        self.settings = settings
        self.limits = settings.gateway
        self.runtime = runtime

    def label_set(self, name: str | None, top_k: int | None) -> tuple[str, int]:
        zero_shot = self.settings.zero_shot
        name = name or zero_shot.default_set
        labels = zero_shot.label_sets.get(name)
        if not labels:
            known = ", ".join(sorted(zero_shot.label_sets))
            raise ApiError(
                ApiErrorCode.UNKNOWN_LABEL_SET, f"no label set {name!r} (known: {known})"
            )
        k = top_k or zero_shot.top_k
        if k > len(labels):
            raise ApiError(
                ApiErrorCode.INVALID_REQUEST,
                f"top_k {k} is more than the {len(labels)} labels of {name!r}",
                "top_k",
            )
        return name, k

    async def encode(self, parts: Parts, **request: object) -> RpcReply:
        """Stage the images, ask a CLIP consumer, clean up; errors become ``ApiError``."""
        timeout = self.limits.request_timeout_s
        folder, prefix = uuid.uuid4().hex, self.limits.staging_prefix
        keys = [rpc_key(prefix, folder, i) for i in range(len(parts.images))]
        try:
            uris = [
                await self.runtime.stage(key, image.data, image.content_type)
                for key, image in zip(keys, parts.images.values(), strict=True)
            ]
            call = RpcRequest.model_validate(
                {
                    "images": dict(zip(parts.images, uris, strict=True)),
                    "texts": parts.texts,
                    "deadline": self.runtime.deadline(timeout),
                    **request,
                }
            )
            reply = await self.runtime.call(call, timeout)
        except TimeoutError:
            raise ApiError(
                ApiErrorCode.TIMEOUT,
                f"no CLIP consumer answered within {timeout:g} s; is one running "
                "(`imagestream consume --tasks clip`)?",
            ) from None
        finally:
            await self.runtime.unstage(keys)
        if reply.error is not None:
            error = reply.error
            raise ApiError.from_pipeline(error.code, error.message, error.key)
        return reply

    def event(
        self,
        image_id: str | None,
        tasks: str | None,
        top_k: int,
        collection: str | None,
        *,
        faces: bool = True,
    ) -> ImageSubmitted:
        """The event of an upload; without ``faces`` (the key's scope) no face task runs."""
        enabled = self.settings.enabled_tasks()
        wanted = [t.strip() for t in (tasks or "").split(",") if t.strip()]
        if not faces:
            wanted = wanted or [t for t in enabled if t != FACE]
            if FACE in wanted or not wanted:
                raise ApiError(ApiErrorCode.FORBIDDEN, "this key lacks the faces scope", "tasks")
        unknown = sorted(set(wanted) - set(enabled))
        if unknown:
            raise ApiError(
                ApiErrorCode.UNKNOWN_TASK,
                f"unknown or disabled task(s) {', '.join(unknown)} (enabled: {', '.join(enabled)})",
                "tasks",
            )
        image_id = image_id or uuid.uuid4().hex
        key = staged_key(self.limits.staging_prefix, collection or "", "images", image_id)
        try:
            return ImageSubmitted(
                event_id=uuid.uuid4().hex,
                image_id=image_id,
                uri=f"s3://{self.settings.s3.bucket}/{key}",
                tasks=wanted,
                top_k=top_k,
                collection=collection,
            )
        except ValidationError as exc:
            first = exc.errors()[0]
            field = ".".join(str(p) for p in first["loc"])
            raise ApiError(ApiErrorCode.INVALID_REQUEST, f"{field}: {first['msg']}", field) from exc

    async def submit(
        self, upload: UploadFile, event: ImageSubmitted, wait: bool
    ) -> tuple[list[TaskResult] | None, int]:
        image = await read_image(upload, "image", self.limits)
        bucket_key = event.bucket_key()[1]
        await self.runtime.stage(bucket_key, image.data, image.content_type)
        await self.runtime.submit(event)
        if not wait:
            return None, 202
        tasks = set(event.tasks or self.settings.enabled_tasks())
        timeout = self.limits.request_timeout_s
        try:
            found = await self.runtime.cache.wait(
                event.image_id, event.event_id, tasks, timeout, tenant=event.collection or ""
            )
        except TimeoutError:
            raise ApiError(
                ApiErrorCode.TIMEOUT,
                f"image {event.image_id!r} was submitted (event {event.event_id}) but its "
                f"results did not arrive within {timeout:g} s; GET /v1/results/... later",
            ) from None
        return found, 200
