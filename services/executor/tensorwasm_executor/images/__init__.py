"""Pre-initialised images and compiled artifacts: capturing an image by running init once,
and finding a function's image or compiled module (memory, local file, the store)."""

from tensorwasm_executor.images.capture import DEFAULT_INIT_EXPORT, capture_image
from tensorwasm_executor.images.image_provider import ImageProvider, ImageRecords
from tensorwasm_executor.images.module_provider import ModuleProvider

__all__ = [
    "DEFAULT_INIT_EXPORT", "ImageProvider", "ImageRecords", "ModuleProvider", "capture_image",
]  # fmt: skip
