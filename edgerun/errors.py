"""Every error edgerun raises on purpose is an EdgerunError."""


class EdgerunError(Exception):
    """Base class of all errors raised by edgerun."""


class ModelLoadError(EdgerunError):
    """The model file or bytes could not be read or are malformed."""


class UnsupportedOperatorError(EdgerunError):
    """A node uses an operator edgerun does not implement."""

    def __init__(self, node_name, op_type, domain, opset, supported):
        self.node_name = node_name
        self.op_type = op_type
        self.domain = domain or "ai.onnx"
        self.opset = opset
        self.supported = sorted(supported)
        super().__init__(
            f"node {node_name!r}: operator {op_type!r} (domain {self.domain!r}, opset {opset}) "
            f"is not supported by edgerun. Supported operators: {', '.join(self.supported)}"
        )


class InvalidInputError(EdgerunError):
    """An input fed to run() does not match the model (name, rank, shape or dtype)."""


class InvalidModelError(EdgerunError):
    """The graph is well-formed ONNX but inconsistent (bad attribute, shape mismatch, ...)."""


class InvalidOptionError(EdgerunError):
    """An option (budget, thread count, schedule override, ...) has a value edgerun cannot use."""


class PlanMismatchError(InvalidOptionError):
    """A plan (or bundle) was made for other kernels, threads or buffer sizes than it would run with."""


class MemoryBudgetError(EdgerunError):
    """No schedule fits the requested memory budget."""

    def __init__(self, message, minimum_bytes, limiting_step=None):
        self.minimum_bytes = minimum_bytes
        self.limiting_step = limiting_step
        super().__init__(message)


class BundleError(EdgerunError):
    """A compiled bundle is corrupted, truncated or of an unknown version."""


class ResourceLimitError(EdgerunError):
    """A tensor, arena or file would take more memory than edgerun's ceiling (edgerun.limits) allows."""

    def __init__(self, message, requested_bytes, limit_bytes):
        self.requested_bytes = requested_bytes
        self.limit_bytes = limit_bytes
        super().__init__(message)
