"""The errors of the kernel library: arguments a launch would fault on or reject."""

from __future__ import annotations


class KernelArgumentError(ValueError):
    """The arguments do not fit the kernel: wrong count or kind, or a buffer too small.

    A GPU would fault (or read and write memory outside the buffers) where the cpu
    backend raises this instead. `param` names the offending parameter when there is one.
    """

    def __init__(self, message: str, *, param: str | None = None) -> None:
        """Records the message and the parameter it is about.

        Args:
            message: What is wrong, for a person.
            param: The parameter's name, or None when the error is not about one.
        """
        super().__init__(message)
        self.param = param


class LaunchGeometryError(KernelArgumentError):
    """The grid or block is outside what `cuLaunchKernel` accepts."""
