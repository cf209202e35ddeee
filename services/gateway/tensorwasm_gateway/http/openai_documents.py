"""The OpenAI-compatible front's documents: requests checked and turned into a prompt, and
the OpenAI response, stream-chunk and error shapes.

The prompt reaches the guest through its `wasi:tensor` input channel; the completion is
the concatenation of the chunks it emits. Sampling knobs are refused rather than ignored.
"""

from __future__ import annotations

import json
import secrets
import time
from dataclasses import dataclass
from typing import Any

COMPLETIONS = "completions"
CHAT = "chat"
_USAGE = {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}
# HTTP status -> the OpenAI error `type`.
_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "invalid_request_error",
    409: "invalid_request_error",
    413: "invalid_request_error",
    429: "rate_limit_error",
}


class OpenAiError(Exception):
    """A request the front refuses, answered with the OpenAI error envelope."""

    def __init__(self, status: int, code: str, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.status, self.code, self.message, self.param = status, code, message, param


def error_envelope(
    status: int, code: str, message: str, param: str | None = None
) -> dict[str, Any]:
    """`{"error": {"message", "type", "param", "code"}}`, the type from the HTTP status."""
    kind = _ERROR_TYPES.get(status, "server_error")
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


@dataclass(frozen=True)
class CompletionRequest:
    """A checked request: which model, the prompt's bytes, whether to stream."""

    kind: str  # COMPLETIONS or CHAT
    model: str
    prompt: bytes
    stream: bool


def parse_request(kind: str, body: bytes) -> CompletionRequest:
    """Checks a /v1/completions or /v1/chat/completions body and assembles its prompt.

    Raises:
        OpenAiError: not a JSON object (openai_invalid_request), no model, or a sampling
            parameter the front does not support (unsupported_parameter, naming it).
    """
    try:
        document = json.loads(body)
    except (ValueError, RecursionError):
        raise OpenAiError(400, "openai_invalid_request", "the body is not JSON") from None
    if not isinstance(document, dict):
        raise OpenAiError(400, "openai_invalid_request", "the body must be a JSON object")
    model = document.get("model")
    if not isinstance(model, str) or not model:
        raise OpenAiError(400, "openai_invalid_request", "model is required", "model")
    _refuse_unsupported(document)
    stream = document.get("stream") is True
    if kind == CHAT:
        messages = document.get("messages")
        if not isinstance(messages, list):
            raise OpenAiError(
                400, "openai_invalid_request", "messages must be an array", "messages"
            )
        return CompletionRequest(kind, model, chat_prompt(messages).encode(), stream)
    return CompletionRequest(
        kind, model, completion_prompt(document.get("prompt")).encode(), stream
    )


def _refuse_unsupported(document: dict[str, Any]) -> None:
    """400 unsupported_parameter for each knob the guest cannot honour."""
    refused = [
        ("max_tokens", document.get("max_tokens") is not None),
        ("temperature", document.get("temperature", 1.0) not in (1, 1.0, None)),
        ("n", document.get("n", 1) not in (1, None)),
        ("echo", document.get("echo") is True),
        ("tools", bool(document.get("tools"))),
    ]
    for param, present in refused:
        if present:
            raise OpenAiError(
                400, "unsupported_parameter", f"{param} is not supported by this gateway", param
            )


def completion_prompt(prompt: object) -> str:
    """A string, or an array of strings joined with newlines; any other shape is empty."""
    if isinstance(prompt, str):
        return prompt
    if isinstance(prompt, list) and all(isinstance(p, str) for p in prompt):
        return "\n".join(prompt)
    return ""


def chat_prompt(messages: list[Any]) -> str:
    """One `role: content` line per message (no role: `user`; content parts: their text
    joined with spaces), then `assistant:`."""
    lines = []
    for message in messages:
        if not isinstance(message, dict):
            continue
        role = message.get("role") or "user"
        lines.append(f"{role}: {_content_text(message.get('content'))}\n")
    return "".join(lines) + "assistant:"


def _content_text(content: object) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = [
            p.get("text", "") for p in content if isinstance(p, dict) and p.get("type") == "text"
        ]
        return " ".join(p for p in parts if isinstance(p, str))
    return ""


class Completion:
    """The response documents of one completion (its id and creation time fixed once)."""

    def __init__(self, request: CompletionRequest) -> None:
        self.kind, self.model = request.kind, request.model
        prefix = "chatcmpl-" if request.kind == CHAT else "cmpl-"
        self.id = prefix + secrets.token_hex(12)
        self.created = int(time.time())

    def _document(self, obj: str, choice: dict[str, Any]) -> dict[str, Any]:
        return {
            "id": self.id, "object": obj, "created": self.created, "model": self.model,
            "choices": [{"index": 0, **choice}],
        }  # fmt: skip

    def response(self, text: str) -> dict[str, Any]:
        """The whole completion, as a unary answer."""
        if self.kind == CHAT:
            message = {"role": "assistant", "content": text}
            document = self._document(
                "chat.completion", {"message": message, "finish_reason": "stop"}
            )
        else:
            document = self._document(
                "text_completion", {"text": text, "logprobs": None, "finish_reason": "stop"}
            )
        return {**document, "usage": dict(_USAGE)}

    def chunk(self, text: str | None, *, first: bool = False) -> dict[str, Any]:
        """A stream chunk with `text`, or (None) the last one, which carries finish_reason."""
        finish = "stop" if text is None else None
        if self.kind == CHAT:
            delta: dict[str, Any] = {} if text is None else {"content": text}
            if first:
                delta["role"] = "assistant"
            return self._document(
                "chat.completion.chunk", {"delta": delta, "finish_reason": finish}
            )
        return self._document(
            "text_completion", {"text": text or "", "logprobs": None, "finish_reason": finish}
        )
