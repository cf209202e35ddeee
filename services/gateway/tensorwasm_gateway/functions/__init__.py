"""Functions: deploying modules, the durable registry, and addressing calls to a function."""

from tensorwasm_gateway.functions.registry import (
    ExportRecord,
    FunctionRecord,
    InstanceRecord,
    Registry,
    add_missing_columns,
    now_ns,
)
from tensorwasm_gateway.functions.service import (
    TYPE_NAMES,
    BlobPutter,
    FunctionService,
    choose_export,
    function_config,
    function_id_from_name,
    offload_declarations,
    resolve_init_export,
)

__all__ = [
    "TYPE_NAMES",
    "BlobPutter",
    "ExportRecord",
    "FunctionRecord",
    "FunctionService",
    "InstanceRecord",
    "Registry",
    "add_missing_columns",
    "choose_export",
    "function_config",
    "function_id_from_name",
    "now_ns",
    "offload_declarations",
    "resolve_init_export",
]
