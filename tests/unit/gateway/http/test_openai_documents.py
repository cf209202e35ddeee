"""The OpenAI front's translation: prompt assembly, refused knobs, shapes, the model map."""

from __future__ import annotations

import json

import pytest
from tensorwasm_common.settings import SettingsError
from tensorwasm_gateway.http.openai_documents import (
    CHAT,
    COMPLETIONS,
    Completion,
    OpenAiError,
    chat_prompt,
    completion_prompt,
    parse_request,
)
from tensorwasm_gateway.settings import GatewaySettings


def test_completion_prompts_join_string_arrays_and_drop_other_shapes() -> None:
    assert completion_prompt("p") == "p"
    assert completion_prompt(["a", "b", "c"]) == "a\nb\nc"
    assert completion_prompt([1, 2]) == "" and completion_prompt(None) == ""
    assert completion_prompt(["a", 3]) == ""


def test_chat_prompts_tag_roles_and_end_with_assistant() -> None:
    messages = [
        {"role": "system", "content": "s"},
        {"content": "no role"},
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "a"},
                {"type": "image_url"},
                {"type": "text", "text": "b"},
            ],
        },
        "not a message",
    ]
    assert chat_prompt(messages) == "system: s\nuser: no role\nuser: a b\nassistant:"
    assert chat_prompt([]) == "assistant:"


@pytest.mark.parametrize(
    ("body", "code", "param"),
    [
        (b"[1]", "openai_invalid_request", None),
        (b"{bad", "openai_invalid_request", None),
        (b'{"prompt": "x"}', "openai_invalid_request", "model"),
        (b'{"model": "m", "max_tokens": 1}', "unsupported_parameter", "max_tokens"),
        (b'{"model": "m", "temperature": 0}', "unsupported_parameter", "temperature"),
        (b'{"model": "m", "n": 3}', "unsupported_parameter", "n"),
        (b'{"model": "m", "echo": true}', "unsupported_parameter", "echo"),
    ],
)
def test_refusals_name_their_code_and_param(body: bytes, code: str, param: str | None) -> None:
    with pytest.raises(OpenAiError) as caught:
        parse_request(COMPLETIONS, body)
    assert (caught.value.status, caught.value.code, caught.value.param) == (400, code, param)


def test_a_request_at_the_defaults_is_accepted() -> None:
    body = {"model": "m", "prompt": "p", "temperature": 1, "n": 1, "echo": False, "stream": True}
    request = parse_request(COMPLETIONS, json.dumps(body).encode())
    assert (request.model, request.prompt, request.stream) == ("m", b"p", True)
    with pytest.raises(OpenAiError) as caught:
        parse_request(CHAT, b'{"model": "m", "messages": "x"}')
    assert caught.value.param == "messages"


def test_stream_chunks_carry_the_role_first_and_finish_last() -> None:
    completion = Completion(parse_request(CHAT, b'{"model": "m", "messages": []}'))
    first = completion.chunk("a", first=True)["choices"][0]
    last = completion.chunk(None)["choices"][0]
    assert first == {
        "index": 0,
        "delta": {"content": "a", "role": "assistant"},
        "finish_reason": None,
    }
    assert last == {"index": 0, "delta": {}, "finish_reason": "stop"}
    assert completion.response("t")["usage"] == {
        "prompt_tokens": 0,
        "completion_tokens": 0,
        "total_tokens": 0,
    }


def test_the_model_map_is_parsed_and_checked_at_start() -> None:
    settings = GatewaySettings(openai_model_map="a:f1, ft:org:b : f2,")
    assert settings.openai_models == {"a": "f1", "ft:org:b": "f2"}
    for bad in ("nocolon", "a:f,a:g", ":f", "a:"):
        with pytest.raises(SettingsError, match="openai_model_map"):
            GatewaySettings(openai_model_map=bad)
