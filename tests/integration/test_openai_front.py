"""The OpenAI-compatible front through a real stack, driven by the official `openai`
client: the model map, the tenant from the token, prompt assembly (as the guest reads
it through wasi:tensor), the response shapes, `stream: true`, and the error envelope."""

from __future__ import annotations

import http.client
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest
import wasmtime
from tensorwasm_client.client import GatewayClient

from tests.integration.conftest import RunningStack, start_stack

pytestmark = pytest.mark.integration

WAT = Path(__file__).resolve().parent.parent / "fixtures" / "wat"
TOKENS = {
    "acme": "oa-acme-integration-0123456789",
    "two": "oa-two-integration-0123456789",
    "wildcard": "oa-wild-integration-0123456789",
}
MODELS = "echo-model:echo,trap-model:trap,ghost-model:ghost,ft:org:echo-2:echo"


@pytest.fixture(scope="module")
def front(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningStack]:
    tokens = (
        f"{TOKENS['acme']}:tenant=acme;{TOKENS['two']}:tenant=acme,beta;"
        f"{TOKENS['wildcard']}:tenant=*"
    )
    running = start_stack(
        tmp_path_factory.mktemp("openai"),
        {"TENSORWASM_GATEWAY_TOKENS": tokens, "TENSORWASM_GATEWAY_OPENAI_MODEL_MAP": MODELS},
    )
    try:
        echo = bytes(wasmtime.wat2wasm((WAT / "tensor_stream.wat").read_text()))
        trap = bytes(wasmtime.wat2wasm('(module (func (export "_start") unreachable))'))
        with GatewayClient(running.gateway, tenant="acme", token=TOKENS["acme"]) as client:
            client.create_function("echo", echo)
            client.create_function("trap", trap)
        yield running
    finally:
        running.stop()


_OPEN: list[openai.OpenAI] = []


@pytest.fixture(autouse=True)
def _close_clients() -> Iterator[None]:
    yield
    while _OPEN:
        _OPEN.pop().close()


def _openai(front: RunningStack, who: str = "acme", **options: Any) -> openai.OpenAI:
    """An `openai` client of the front with `who`'s token (closed after the test)."""
    address = front.services["gateway"].http_address
    client = openai.OpenAI(
        base_url=f"http://{address}/v1", api_key=TOKENS.get(who, who), max_retries=0, **options
    )
    _OPEN.append(client)
    return client


def _post(front: RunningStack, path: str, body: bytes) -> tuple[int, bytes]:
    host, port = front.services["gateway"].http_address.rsplit(":", 1)
    connection = http.client.HTTPConnection(host, int(port), timeout=60)
    try:
        headers = {"authorization": f"Bearer {TOKENS['acme']}", "content-type": "application/json"}
        connection.request("POST", path, body=body, headers=headers)
        reply = connection.getresponse()
        return reply.status, reply.read()
    finally:
        connection.close()


def test_completions_return_what_the_guest_emitted_for_the_prompt(front: RunningStack) -> None:
    client = _openai(front)
    completion = client.completions.create(model="echo-model", prompt="Say hi")
    assert completion.object == "text_completion" and completion.id.startswith("cmpl-")
    assert completion.model == "echo-model" and completion.created > 0
    assert [(c.index, c.text, c.finish_reason) for c in completion.choices] == [
        (0, "echo:Say hi", "stop")
    ]
    assert completion.usage is not None and completion.usage.total_tokens == 0
    joined = client.completions.create(model="ft:org:echo-2", prompt=["one", "two"])
    assert joined.choices[0].text == "echo:one\ntwo"


def test_chat_prompts_are_role_lines_then_assistant(front: RunningStack) -> None:
    chat = _openai(front).chat.completions.create(
        model="echo-model",
        messages=[
            {"role": "system", "content": "be brief"},
            {
                "role": "user",
                "content": [{"type": "text", "text": "hi"}, {"type": "text", "text": "there"}],
            },
        ],
    )
    assert chat.object == "chat.completion" and chat.id.startswith("chatcmpl-")
    choice = chat.choices[0]
    assert choice.message.role == "assistant" and choice.finish_reason == "stop"
    assert choice.message.content == "echo:system: be brief\nuser: hi there\nassistant:"


def test_streams_are_openai_events_ending_with_done(front: RunningStack) -> None:
    client = _openai(front)
    texts = [
        c.choices[0].text
        for c in client.completions.create(model="echo-model", prompt="abcdefg", stream=True)
    ]
    assert texts == ["echo:", "abc", "def", "g", ""]
    deltas = list(
        client.chat.completions.create(
            model="echo-model", messages=[{"role": "user", "content": "x"}], stream=True
        )
    )
    assert deltas[0].choices[0].delta.role == "assistant"
    assert "".join(d.choices[0].delta.content or "" for d in deltas) == "echo:user: x\nassistant:"
    assert deltas[-1].choices[0].finish_reason == "stop"
    status, body = _post(
        front,
        "/v1/completions",
        json.dumps({"model": "echo-model", "prompt": "q", "stream": True}).encode(),
    )
    assert status == 200 and body.endswith(b"data: [DONE]\n\n")


@pytest.mark.parametrize(
    ("extra", "param"),
    [
        ({"max_tokens": 5}, "max_tokens"),
        ({"temperature": 0.5}, "temperature"),
        ({"n": 2}, "n"),
        ({"echo": True}, "echo"),
    ],
)
def test_unsupported_parameters_are_refused_by_name(
    front: RunningStack, extra: dict[str, Any], param: str
) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        _openai(front).completions.create(model="echo-model", prompt="x", **extra)
    assert caught.value.code == "unsupported_parameter"
    assert caught.value.param == param and caught.value.type == "invalid_request_error"


def test_tools_are_refused_and_defaults_accepted(front: RunningStack) -> None:
    tool = {"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}
    with pytest.raises(openai.BadRequestError) as caught:
        _openai(front).chat.completions.create(
            model="echo-model", messages=[{"role": "user", "content": "x"}], tools=[tool]
        )
    assert (caught.value.code, caught.value.param) == ("unsupported_parameter", "tools")
    # The knobs at their defaults are no refusal.
    ok = _openai(front).completions.create(model="echo-model", prompt="y", temperature=1.0, n=1)
    assert ok.choices[0].text == "echo:y"


def test_errors_use_the_openai_envelope(front: RunningStack) -> None:
    with pytest.raises(openai.NotFoundError) as missing_model:
        _openai(front).completions.create(model="nope", prompt="x")
    assert missing_model.value.code == "model_not_found"
    with pytest.raises(openai.NotFoundError) as missing_function:
        _openai(front).completions.create(model="ghost-model", prompt="x")
    assert missing_function.value.code == "not_found"
    with pytest.raises(openai.AuthenticationError) as unknown:
        _openai(front, "not-a-token").completions.create(model="echo-model", prompt="x")
    assert unknown.value.type == "authentication_error"
    with pytest.raises(openai.PermissionDeniedError):  # a token of two tenants names none
        _openai(front, "two").completions.create(model="echo-model", prompt="x")
    with pytest.raises(openai.InternalServerError) as trapped:
        _openai(front).completions.create(model="trap-model", prompt="x")
    assert trapped.value.code == "wasmtime"
    status, body = _post(front, "/v1/completions", b"{not json")
    error = json.loads(body)["error"]
    assert status == 400 and (error["type"], error["code"]) == (
        "invalid_request_error",
        "openai_invalid_request",
    )


def test_the_tenant_is_the_tokens_not_the_header(front: RunningStack) -> None:
    client = _openai(front, default_headers={"x-tensorwasm-tenant": "beta"})
    assert client.completions.create(model="echo-model", prompt="t").choices[0].text == "echo:t"
    # A wildcard token acts for the default tenant, which has no `echo`.
    with pytest.raises(openai.NotFoundError):
        _openai(front, "wildcard").completions.create(model="echo-model", prompt="x")
