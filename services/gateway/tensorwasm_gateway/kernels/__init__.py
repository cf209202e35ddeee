"""The kernel registry: signed PTX kernels by name@version, manifests in the gateway's
database (catalog.py), PTX in the snapshot store, signatures and field rules (signing.py),
the checks and their order (service.py)."""

from tensorwasm_gateway.kernels.catalog import SHARED_NAMESPACE, KernelCatalog, KernelRecord
from tensorwasm_gateway.kernels.service import KernelPublication, KernelService, Publisher

__all__ = [
    "SHARED_NAMESPACE",
    "KernelCatalog",
    "KernelPublication",
    "KernelRecord",
    "KernelService",
    "Publisher",
]
