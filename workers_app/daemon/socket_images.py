"""Images ComfyUI sends on its socket as binary frames (protocol 4.6), and which of them are outputs.

`SaveImageWebsocket` (and the tooling nodes' `ETN_SendImageWebSocket`, which Krita's AI plugin uses) hand
their images to the client only this way: history lists nothing for them. Other binary images are latent
previews a sampler sends while it runs. Pure functions: the socket thread (``ComfyUIClient``) parses, the
task's run (``runner``) decides what each image is.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from typing import Any

PREVIEW_IMAGE = 1  # 4 bytes format (1 JPEG, 2 PNG), then the file
PREVIEW_IMAGE_WITH_METADATA = 4  # 4 bytes length L, L bytes of JSON metadata, then the file
FORMAT_CODES = {1: "jpeg", 2: "png"}
MIME_TYPES = {"image/jpeg": "jpeg", "image/png": "png", "image/webp": "webp"}
EXTENSIONS = {"jpeg": "jpg", "png": "png", "webp": "webp"}
# Output nodes whose images exist only as socket frames (their history entry has no file for them).
SOCKET_IMAGE_CLASSES = frozenset({"SaveImageWebsocket", "ETN_SendImageWebSocket"})
MAX_METADATA_BYTES = 64 * 1024


@dataclass(frozen=True)
class SocketImage:
    """One image frame: its file bytes and, from a type 4 frame, the node and prompt that sent it."""

    format: str  # "png", "jpeg" or "webp"
    data: bytes
    node_id: str | None = None
    prompt_id: str | None = None

    @property
    def extension(self) -> str:
        return EXTENSIONS[self.format]


def parse(payload: bytes) -> SocketImage | None:
    """The image in a binary frame, or None for other frames (text, unknown types, malformed ones)."""
    if len(payload) < 8:
        return None
    event, word = struct.unpack_from(">II", payload)
    if event == PREVIEW_IMAGE:
        image_format = FORMAT_CODES.get(word)
        return SocketImage(image_format, payload[8:]) if image_format and len(payload) > 8 else None
    if event != PREVIEW_IMAGE_WITH_METADATA or word > MAX_METADATA_BYTES or len(payload) <= 8 + word:
        return None
    try:
        metadata = json.loads(payload[8 : 8 + word])
    except ValueError:
        return None
    if not isinstance(metadata, dict):
        return None
    image_format = MIME_TYPES.get(str(metadata.get("image_type") or ""))
    if image_format is None:
        return None
    node_id, prompt_id = _str_or_none(metadata.get("node_id")), _str_or_none(metadata.get("prompt_id"))
    return SocketImage(image_format, payload[8 + word :], node_id, prompt_id)


def socket_image_nodes(workflow: dict[str, Any]) -> frozenset[str]:
    """Ids of the workflow's nodes whose images come only as socket frames."""
    return frozenset(
        str(node_id)
        for node_id, node in workflow.items()
        if isinstance(node, dict) and node.get("class_type") in SOCKET_IMAGE_CLASSES
    )


def _str_or_none(value: Any) -> str | None:
    return None if value is None else str(value)
