"""Unit tests for tensorwasm_common.settings: layering, conversion and validation."""

from __future__ import annotations

import asyncio
import dataclasses
from pathlib import Path

import pytest
from tensorwasm_common.bootstrap import run_on_loop
from tensorwasm_common.settings import (
    ServerSettings,
    SettingsError,
    env_name,
    load_settings,
    split_address,
)
from tensorwasm_gateway.settings import GatewaySettings


@dataclasses.dataclass(frozen=True, kw_only=True)
class DemoSettings(ServerSettings):
    """A settings class with one field of every supported type."""

    enabled: bool = False
    count: int = 3
    ratio: float = 0.5
    label: str = "plain"
    root: Path = Path("/srv/demo")
    cache_dir: Path | None = None
    peers: tuple[str, ...] = ("127.0.0.1:1",)


def test_env_name_upper_cases_service_and_field() -> None:
    assert env_name("gateway", "listen_address") == "TENSORWASM_GATEWAY_LISTEN_ADDRESS"
    assert env_name("Jit", "max_message_bytes") == "TENSORWASM_JIT_MAX_MESSAGE_BYTES"


def test_defaults_when_nothing_is_set() -> None:
    settings = load_settings(DemoSettings, "demo", environ={})
    assert settings == DemoSettings()
    assert settings.listen_address == "127.0.0.1:0"
    assert settings.metrics_address == "127.0.0.1:0"
    assert settings.ready_file is None
    assert settings.log_level == "INFO"
    assert settings.shutdown_grace_seconds == 5.0
    assert settings.max_message_bytes == 64 << 20
    assert settings.count == 3
    assert settings.peers == ("127.0.0.1:1",)


def test_environment_overrides_defaults() -> None:
    environ = {
        "TENSORWASM_DEMO_COUNT": "7",
        "TENSORWASM_DEMO_LISTEN_ADDRESS": "0.0.0.0:9000",
        "TENSORWASM_DEMO_LABEL": "from-env",
        "TENSORWASM_DEMO_ALLOW_NO_SERVICE_TOKEN": "true",  # beyond loopback without a token
    }
    settings = load_settings(DemoSettings, "demo", environ=environ)
    assert settings.count == 7
    assert settings.listen_address == "0.0.0.0:9000"
    assert settings.label == "from-env"
    assert settings.ratio == 0.5  # untouched fields keep their defaults


def test_flags_override_environment() -> None:
    environ = {"TENSORWASM_DEMO_COUNT": "7", "TENSORWASM_DEMO_LABEL": "from-env"}
    settings = load_settings(
        DemoSettings,
        "demo",
        argv=["--count", "9", "--listen-address", "127.0.0.1:7000"],
        environ=environ,
    )
    assert settings.count == 9
    assert settings.listen_address == "127.0.0.1:7000"
    assert settings.label == "from-env"  # no flag given: the environment still applies


def test_variables_of_other_services_are_ignored() -> None:
    environ = {"TENSORWASM_OTHER_COUNT": "11", "COUNT": "12", "TENSORWASM_DEMOX_COUNT": "13"}
    assert load_settings(DemoSettings, "demo", environ=environ).count == 3


def test_service_name_is_case_insensitive_in_variable_names() -> None:
    settings = load_settings(DemoSettings, "Demo", environ={"TENSORWASM_DEMO_COUNT": "4"})
    assert settings.count == 4


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("1", True),
        ("true", True),
        ("TRUE", True),
        (" yes ", True),
        ("on", True),
        ("0", False),
        ("false", False),
        ("No", False),
        ("off", False),
        ("", False),
    ],
)
def test_bool_conversion(raw: str, expected: bool) -> None:
    settings = load_settings(DemoSettings, "demo", environ={"TENSORWASM_DEMO_ENABLED": raw})
    assert settings.enabled is expected


@pytest.mark.parametrize(
    ("raw", "expected"),
    [("42", 42), ("-3", -3), ("0x10", 16), ("0o17", 15), ("1_000", 1000)],
)
def test_int_conversion_accepts_python_literals(raw: str, expected: int) -> None:
    settings = load_settings(DemoSettings, "demo", environ={"TENSORWASM_DEMO_COUNT": raw})
    assert settings.count == expected


def test_float_str_and_path_conversion() -> None:
    environ = {
        "TENSORWASM_DEMO_RATIO": "2.25",
        "TENSORWASM_DEMO_SHUTDOWN_GRACE_SECONDS": "1e-1",
        "TENSORWASM_DEMO_LABEL": "  spaced  ",
        "TENSORWASM_DEMO_ROOT": "/data/tw",
    }
    settings = load_settings(DemoSettings, "demo", environ=environ)
    assert settings.ratio == 2.25
    assert settings.shutdown_grace_seconds == 0.1
    assert settings.label == "  spaced  "
    assert settings.root == Path("/data/tw")
    assert isinstance(settings.root, Path)


def test_optional_path_from_value_and_from_empty_string() -> None:
    settings = load_settings(
        DemoSettings, "demo", environ={"TENSORWASM_DEMO_CACHE_DIR": "/tmp/cache"}
    )
    assert settings.cache_dir == Path("/tmp/cache")
    settings = load_settings(DemoSettings, "demo", environ={"TENSORWASM_DEMO_READY_FILE": ""})
    assert settings.ready_file is None


def test_optional_value_can_be_cleared_by_an_empty_flag() -> None:
    settings = load_settings(
        DemoSettings,
        "demo",
        argv=["--cache-dir", ""],
        environ={"TENSORWASM_DEMO_CACHE_DIR": "/tmp/cache"},
    )
    assert settings.cache_dir is None


def test_tuple_conversion_splits_commas_and_drops_blanks() -> None:
    environ = {"TENSORWASM_DEMO_PEERS": " a:1, b:2 ,,c:3, "}
    settings = load_settings(DemoSettings, "demo", environ=environ)
    assert settings.peers == ("a:1", "b:2", "c:3")


@pytest.mark.parametrize(
    ("field", "raw", "kind"),
    [
        ("COUNT", "many", "int"),
        ("COUNT", "1.5", "int"),
        ("RATIO", "half", "float"),
        ("ENABLED", "maybe", "bool"),
        ("MAX_MESSAGE_BYTES", "64MiB", "int"),
    ],
)
def test_malformed_environment_value_names_the_variable(field: str, raw: str, kind: str) -> None:
    variable = f"TENSORWASM_DEMO_{field}"
    with pytest.raises(SettingsError) as caught:
        load_settings(DemoSettings, "demo", environ={variable: raw})
    assert str(caught.value) == f"{variable}: expected {kind}, got {raw!r}"


def test_malformed_flag_names_the_flag() -> None:
    with pytest.raises(SettingsError) as caught:
        load_settings(DemoSettings, "demo", argv=["--count", "lots"], environ={})
    assert str(caught.value) == "--count: expected int, got 'lots'"


def test_malformed_environment_fails_even_when_a_flag_overrides_it() -> None:
    with pytest.raises(SettingsError, match="TENSORWASM_DEMO_COUNT"):
        load_settings(
            DemoSettings, "demo", argv=["--count", "2"], environ={"TENSORWASM_DEMO_COUNT": "x"}
        )


def test_settings_error_is_a_value_error() -> None:
    assert issubclass(SettingsError, ValueError)


@pytest.mark.parametrize(
    ("variable", "raw", "message"),
    [
        (
            "LISTEN_ADDRESS",
            "localhost",
            "demo settings: listen_address: expected HOST:PORT, got 'localhost'",
        ),
        (
            "METRICS_ADDRESS",
            "host:99999",
            "demo settings: metrics_address: expected HOST:PORT, got 'host:99999'",
        ),
        (
            "LOG_LEVEL",
            "TRACE",
            "demo settings: log_level: expected DEBUG/INFO/WARNING/ERROR, got 'TRACE'",
        ),
        (
            "SHUTDOWN_GRACE_SECONDS",
            "-0.5",
            "demo settings: shutdown_grace_seconds: must be >= 0",
        ),
        (
            "MAX_MESSAGE_BYTES",
            str((1 << 20) - 1),
            "demo settings: max_message_bytes: must be at least 1 MiB",
        ),
        (
            "EVENT_LOOP",
            "trio",
            "demo settings: event_loop: expected one of uvloop, asyncio, got 'trio'",
        ),
    ],
)
def test_validation_errors_name_service_and_field(variable: str, raw: str, message: str) -> None:
    with pytest.raises(SettingsError) as caught:
        load_settings(DemoSettings, "demo", environ={f"TENSORWASM_DEMO_{variable}": raw})
    assert str(caught.value) == message


def test_validation_boundaries_are_accepted() -> None:
    environ = {
        "TENSORWASM_DEMO_MAX_MESSAGE_BYTES": str(1 << 20),
        "TENSORWASM_DEMO_SHUTDOWN_GRACE_SECONDS": "0",
        "TENSORWASM_DEMO_LOG_LEVEL": "debug",
        "TENSORWASM_DEMO_METRICS_ADDRESS": "",
        "TENSORWASM_DEMO_LISTEN_ADDRESS": "[::1]:65535",
    }
    settings = load_settings(DemoSettings, "demo", environ=environ)
    assert settings.max_message_bytes == 1 << 20
    assert settings.shutdown_grace_seconds == 0.0
    assert settings.log_level == "debug"
    assert settings.metrics_address == ""  # empty disables the metrics endpoint
    assert settings.listen_address == "[::1]:65535"


@pytest.mark.parametrize(("name", "expected"), [("uvloop", "uvloop"), ("asyncio", "asyncio")])
def test_the_service_runs_on_the_event_loop_it_names(name: str, expected: str) -> None:
    settings = load_settings(DemoSettings, "demo", environ={"TENSORWASM_DEMO_EVENT_LOOP": name})
    seen: list[str] = []

    async def main() -> None:
        seen.append(type(asyncio.get_running_loop()).__module__.partition(".")[0])

    run_on_loop(main(), settings.event_loop)
    assert seen == [expected]


def test_direct_construction_validates_too() -> None:
    with pytest.raises(SettingsError) as caught:
        ServerSettings(listen_address="nope")
    assert str(caught.value) == "listen_address: expected HOST:PORT, got 'nope'"


def test_settings_are_frozen() -> None:
    settings = ServerSettings()
    with pytest.raises(dataclasses.FrozenInstanceError):
        settings.log_level = "DEBUG"  # type: ignore[misc]


def test_non_dataclass_is_rejected() -> None:
    class NotSettings:
        pass

    with pytest.raises(TypeError, match="is not a dataclass"):
        load_settings(NotSettings, "demo", environ={})


@pytest.mark.parametrize(
    ("address", "expected"),
    [
        ("127.0.0.1:50051", ("127.0.0.1", 50051)),
        ("localhost:0", ("localhost", 0)),
        ("[::1]:8080", ("::1", 8080)),
        ("example.org:65535", ("example.org", 65535)),
    ],
)
def test_split_address(address: str, expected: tuple[str, int]) -> None:
    assert split_address(address) == expected


@pytest.mark.parametrize(
    "address", ["", "localhost", "localhost:", ":80", "host:65536", "host:-1", "host:http"]
)
def test_split_address_rejects(address: str) -> None:
    with pytest.raises(SettingsError) as caught:
        split_address(address)
    assert str(caught.value) == f"expected HOST:PORT, got {address!r}"


def test_gateway_settings_from_environment() -> None:
    environ = {
        "TENSORWASM_GATEWAY_EXECUTOR_ADDRESSES": "10.0.0.1:50052,10.0.0.2:50052",
        "TENSORWASM_GATEWAY_DATABASE_PATH": "/var/lib/tw/registry.sqlite3",
        "TENSORWASM_GATEWAY_MAX_MODULE_BYTES": "1024",
    }
    settings = load_settings(GatewaySettings, "gateway", environ=environ)
    assert settings.executor_addresses == ("10.0.0.1:50052", "10.0.0.2:50052")
    assert settings.database_path == Path("/var/lib/tw/registry.sqlite3")
    assert settings.max_module_bytes == 1024
    assert settings.listen_address == "127.0.0.1:50051"


@pytest.mark.parametrize(
    ("environ", "fragment"),
    [
        ({"TENSORWASM_GATEWAY_EXECUTOR_ADDRESSES": " , "}, "at least one executor"),
        ({"TENSORWASM_GATEWAY_EXECUTOR_ADDRESSES": "a:1,broken"}, "'broken'"),
        ({"TENSORWASM_GATEWAY_MAX_MODULE_BYTES": "7"}, "max_module_bytes"),
        (
            {
                "TENSORWASM_GATEWAY_MAX_MODULE_BYTES": str((1 << 20) + 1),
                "TENSORWASM_GATEWAY_MAX_MESSAGE_BYTES": str(1 << 20),
            },
            "max_module_bytes",
        ),
    ],
)
def test_gateway_settings_validation(environ: dict[str, str], fragment: str) -> None:
    with pytest.raises(SettingsError) as caught:
        load_settings(GatewaySettings, "gateway", environ=environ)
    assert str(caught.value).startswith("gateway settings: ")
    assert fragment in str(caught.value)


def _token_file(tmp_path: Path, token: str = "t" * 40) -> Path:
    path = tmp_path / "service-token"
    path.write_text(token + "\n")
    return path


@pytest.mark.parametrize("address", ["0.0.0.0:0", "10.1.2.3:50054", "[::]:0", "host.svc:1"])
def test_an_internal_service_beyond_loopback_needs_a_service_token(address: str) -> None:
    with pytest.raises(SettingsError, match="no service token is configured"):
        load_settings(ServerSettings, "jit", environ={"TENSORWASM_JIT_LISTEN_ADDRESS": address})
    allowed = load_settings(
        ServerSettings,
        "jit",
        environ={
            "TENSORWASM_JIT_LISTEN_ADDRESS": address,
            "TENSORWASM_JIT_ALLOW_NO_SERVICE_TOKEN": "true",
        },
    )
    assert allowed.service_token() is None


@pytest.mark.parametrize("address", ["127.0.0.1:0", "localhost:1", "[::1]:0"])
def test_loopback_needs_no_service_token(address: str) -> None:
    settings = load_settings(
        ServerSettings, "jit", environ={"TENSORWASM_JIT_LISTEN_ADDRESS": address}
    )
    assert settings.service_token() is None


def test_the_service_token_comes_from_the_common_variable_or_the_services_own(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    common = _token_file(tmp_path, "c" * 40)
    own = tmp_path / "own"
    own.write_text("o" * 40)
    monkeypatch.setenv("TENSORWASM_SERVICE_TOKEN_FILE", str(common))
    beyond = {"TENSORWASM_JIT_LISTEN_ADDRESS": "0.0.0.0:0"}
    assert load_settings(ServerSettings, "jit", environ=beyond).service_token() == "c" * 40
    mine = {**beyond, "TENSORWASM_JIT_SERVICE_TOKEN_FILE": str(own)}
    assert load_settings(ServerSettings, "jit", environ=mine).service_token() == "o" * 40


@pytest.mark.parametrize(
    ("content", "message"),
    [("short", "32..1024 characters"), ("x" * 30 + " y" * 5, "printable ASCII")],
)
def test_a_malformed_service_token_fails_fast(tmp_path: Path, content: str, message: str) -> None:
    path = _token_file(tmp_path, content)
    with pytest.raises(SettingsError, match=message):
        ServerSettings(service_token_file=path)
    with pytest.raises(SettingsError, match="cannot read"):
        ServerSettings(service_token_file=tmp_path / "missing")
