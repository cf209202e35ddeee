"""Functions: deploying modules, the durable registry, and addressing calls to a function."""

from tensorwasm_gateway.calls import (
    DEFAULT_CONFIG,
    ExportRecord,
    FunctionConfig,
    FunctionConfigCodec,
)
from tensorwasm_gateway.functions.references import References
from tensorwasm_gateway.functions.registry import (
    FunctionRecord,
    InstanceRecord,
    Registry,
    now_ns,
)
from tensorwasm_gateway.functions.service import (
    BlobPutter,
    FunctionService,
    choose_export,
    function_id_from_name,
    offload_declarations,
    resolve_init_export,
)
from tensorwasm_gateway.functions.upload import (
    ModuleUpload,
    UploadHeader,
    empty_part,
    no_header,
    second_header,
)

__all__ = [
    "DEFAULT_CONFIG",
    "BlobPutter",
    "ExportRecord",
    "FunctionConfig",
    "FunctionConfigCodec",
    "FunctionRecord",
    "FunctionService",
    "InstanceRecord",
    "ModuleUpload",
    "References",
    "Registry",
    "UploadHeader",
    "choose_export",
    "empty_part",
    "function_id_from_name",
    "no_header",
    "now_ns",
    "offload_declarations",
    "resolve_init_export",
    "second_header",
]
