"""Bounded request input for the search service and the routers it includes: the POST body limit (ASGI
middleware), JSON bodies bounded in size and nesting depth before parsing, one-line 422 messages from
validation errors, and the `topk` parameter with its deprecated alias `k`."""

from __future__ import annotations

from typing import Any, Mapping, Sequence

from fastapi import HTTPException, Request
from starlette.types import Message, Receive, Scope, Send

__all__ = [
    "BodyLimit",
    "MAX_JSON_BYTES",
    "MAX_JSON_DEPTH",
    "MULTIPART_SLACK",
    "json_body",
    "json_depth_ok",
    "topk_param",
    "validation_message",
]

# Multipart framing (boundaries, part headers) on top of the file bytes themselves.
MULTIPART_SLACK = 64 * 1024
# JSON request bodies: a few small fields; bounded before parsing (size, then nesting depth).
MAX_JSON_BYTES = 16 * 1024
MAX_JSON_DEPTH = 8


class BodyLimit:
    """ASGI middleware: 413 when a POST body grows past `limit` bytes, whatever Content-Length said."""

    def __init__(self, app: Any, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope.get("method") != "POST":
            await self.app(scope, receive, send)
            return
        seen = 0

        async def limited() -> Message:
            nonlocal seen
            msg = await receive()
            if msg.get("type") == "http.request":
                seen += len(msg.get("body", b""))
                if seen > self.limit:
                    raise HTTPException(413, detail=f"upload too large (limit {self.limit - MULTIPART_SLACK} bytes)")
            return msg

        await self.app(scope, limited, send)


def json_depth_ok(data: bytes, limit: int) -> bool:
    """True when no array/object in `data` nests deeper than `limit` (strings skipped, escapes honoured)."""
    depth, in_str, esc = 0, False, False
    for b in data:
        if in_str:
            if esc:
                esc = False
            elif b == 0x5C:  # backslash
                esc = True
            elif b == 0x22:
                in_str = False
        elif b == 0x22:
            in_str = True
        elif b in (0x5B, 0x7B):
            depth += 1
            if depth > limit:
                return False
        elif b in (0x5D, 0x7D):
            depth -= 1
    return True


async def json_body(
    request: Request, model: Any, max_bytes: int = MAX_JSON_BYTES, max_depth: int = MAX_JSON_DEPTH
) -> Any:
    """The request's JSON body validated by pydantic `model`; size and nesting depth are bounded before parsing.

    Every refusal is a 422 with a message (a body over `max_bytes` is a 413), never a parser crash.
    """
    from pydantic import ValidationError

    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        chunks.append(chunk)
        if size > max_bytes:
            if not json_depth_ok(b"".join(chunks)[:max_bytes], max_depth):
                raise HTTPException(422, detail=f"JSON body nested deeper than {max_depth} levels")
            raise HTTPException(413, detail=f"JSON body too large (limit {max_bytes} bytes)")
    data = b"".join(chunks)
    if not json_depth_ok(data, max_depth):
        raise HTTPException(422, detail=f"JSON body nested deeper than {max_depth} levels")
    try:
        return model.model_validate_json(data)
    except ValidationError as exc:
        raise HTTPException(422, detail=validation_message(exc.errors(include_url=False), body=True)) from None


def validation_message(errors: Sequence[Mapping[str, Any]], body: bool = False) -> str:
    parts = []
    for err in errors[:5]:
        loc = [str(x) for x in err.get("loc", ()) if not (body and x == "body")]
        if loc and loc[0] in ("query", "path", "header", "body"):
            loc = loc[1:]
        # union members show up as extra location parts ('int', 'constrained-str'): keep the field name
        loc = [x for x in loc if x not in ("int", "str") and not x.startswith(("constrained-", "function-"))]
        msg = err.get("msg", "invalid")
        if err.get("type") == "json_invalid":
            msg = "invalid JSON"
        parts.append(f"{'.'.join(loc) or 'body'}: {msg}")
    return "; ".join(dict.fromkeys(parts))


def topk_param(topk: int | None, k: int | None, default: int) -> int:
    """The number of results a request asks for: `topk`, else the deprecated alias `k`, else `default`."""
    if topk is not None and k is not None and topk != k:
        raise HTTPException(400, detail=f"topk={topk} and k={k} (its deprecated alias) disagree; give topk only")
    return topk if topk is not None else k if k is not None else default
