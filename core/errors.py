"""Typed error hierarchy; CLIs turn these into one-line messages and the API maps them to HTTP."""

from __future__ import annotations

from typing import Any


class ImageSearchError(Exception):
    """Base of every error this project raises on purpose (a known failure, not a bug)."""

    status_code = 500  # the API's mapping; CLIs ignore it

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class ConfigError(ImageSearchError):
    """A setting, model.json or command-line value is invalid."""

    status_code = 500


class InvalidModelNameError(ImageSearchError):
    """A model name outside ``[a-z0-9_-]{1,64}`` (names become paths and URLs)."""

    status_code = 404

    def __init__(self, name: str) -> None:
        shown = name if len(name) <= 80 else name[:77] + "..."
        super().__init__(f"invalid model name {shown!r}: use 1-64 characters from a-z, 0-9, '_' and '-'")
        self.name = name


class UnknownModelError(ImageSearchError):
    """A well-formed model name that the registry does not hold."""

    status_code = 404

    def __init__(self, name: str, available: list[str], hint: str = "") -> None:
        import difflib

        listed = ", ".join(available) or "none"
        close = difflib.get_close_matches(name, available, n=1, cutoff=0.6)
        guess = f"; did you mean {close[0]!r}?" if close else ""
        super().__init__(f"unknown model {name!r}{guess}; available models: {listed}" + (f"; {hint}" if hint else ""))
        self.name = name
        self.available = available


class MissingInputError(ImageSearchError):
    """A required input file (products.csv, a previous phase's output) does not exist."""

    status_code = 503

    def __init__(self, model: str, message: str) -> None:
        super().__init__(f"model {model!r}: {message}")
        self.model = model


class CsvSchemaError(ImageSearchError):
    """The CSV as a whole cannot be used (missing required column, unreadable file)."""

    status_code = 400

    def __init__(self, model: str, message: str) -> None:
        super().__init__(f"model {model!r}: {message}")
        self.model = model


class NoUsableProductsError(ImageSearchError):
    """Every product was rejected or lost its images: there is nothing to index."""

    status_code = 503

    def __init__(self, model: str, message: str) -> None:
        super().__init__(f"model {model!r}: {message}")
        self.model = model


class BackboneLoadError(ImageSearchError):
    """The CLIP weights could not be loaded (hub unreachable, bad local folder)."""

    status_code = 503


class IndexNotReadyError(ImageSearchError):
    """A model has no index yet, or its index files are missing, inconsistent or corrupt."""

    status_code = 503

    def __init__(self, model: str, reason: str) -> None:
        super().__init__(f"model {model!r} is not searchable: {reason}")
        self.model = model
        self.reason = reason


class ProductNotFoundError(ImageSearchError):
    """A product id that the model's catalogue does not hold."""

    status_code = 404

    def __init__(self, model: str, product_id: str) -> None:
        super().__init__(f"product {product_id!r} not found in model {model!r}")
        self.model = model
        self.product_id = product_id


class BadImageError(ImageSearchError):
    """An uploaded or referenced image cannot be decoded or breaks a limit."""

    status_code = 400

    def __init__(self, reason: str, status_code: int = 400) -> None:
        super().__init__(reason)
        self.reason = reason
        self.status_code = status_code


class BadRequestError(ImageSearchError):
    """A well-typed request whose content cannot be served (empty query, bad filter)."""

    status_code = 400


class AuthError(ImageSearchError):
    """Admin access denied: missing/wrong key (401) or admin disabled (403)."""

    def __init__(self, message: str, status_code: int = 401) -> None:
        super().__init__(message)
        self.status_code = status_code


class NotEnoughDataError(ImageSearchError):
    """The catalogue cannot support a quality task (one category, too few products per category)."""

    status_code = 422

    def __init__(self, model: str, message: str) -> None:
        super().__init__(f"model {model!r}: {message}")
        self.model = model


class TrainingError(ImageSearchError):
    """Fine-tuning could not finish or adopt its head (e.g. the index rebuild through it failed)."""

    status_code = 500

    def __init__(self, model: str, message: str) -> None:
        super().__init__(f"model {model!r}: {message}")
        self.model = model


class ImageNotAvailableError(ImageSearchError):
    """A known product whose preview image is not cached (or has gone from disk, or is refused by the
    image-shape policy: ``reason``)."""

    status_code = 404

    def __init__(self, model: str, product_id: str, reason: str = "") -> None:
        what = f"no usable preview image ({reason})" if reason else "no cached preview image"
        super().__init__(f"product {product_id!r} in model {model!r} has {what}")
        self.model = model
        self.product_id = product_id


class OverloadedError(ImageSearchError):
    """The server's bounded queues are full; the client should retry shortly (Retry-After)."""

    status_code = 503
    retry_after = 1


class RateLimitedError(ImageSearchError):
    """Too many failed admin-key attempts from one client address; retry after ``retry_after`` seconds."""

    status_code = 429

    def __init__(self, message: str, retry_after: int) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class PayloadTooLargeError(ImageSearchError):
    """A request body over its limit (refused on Content-Length, or as soon as the limit is passed)."""

    status_code = 413


class RequestTimeoutError(ImageSearchError):
    """The client did not send its request body within the deadline."""

    status_code = 408


class StoreError(ImageSearchError):
    """The catalogue store cannot be read or written (locked too long, damaged file)."""

    status_code = 503

    def __init__(self, model: str, message: str) -> None:
        super().__init__(f"model {model!r}: {message}")
        self.model = model


class StoreUnavailableError(StoreError):
    """The store's server (Milvus) cannot be reached or opened, for any model."""

    def __init__(self, message: str) -> None:
        ImageSearchError.__init__(self, message)
        self.model = ""


class StorageFullError(StoreError):
    """The disk holding the catalogue is full: the write was rolled back, nothing else changed."""

    status_code = 507


class BuildInProgressError(ImageSearchError):
    """Another build of the same model is running (one pipeline run per model at a time)."""

    status_code = 409

    def __init__(self, model: str) -> None:
        super().__init__(f"model {model!r}: another build of this model is running; wait for it to finish")
        self.model = model


def disk_full(exc: OSError, where: str = "") -> StorageFullError | None:
    """A full disk met outside SQLite (an image cache or index file write) as a typed error, else None."""
    import errno

    if exc.errno not in (errno.ENOSPC, errno.EDQUOT):
        return None
    place = where or str(exc.filename or "the data folder")
    return StorageFullError(place, f"the disk is full ({exc.strerror}); free some space and run again: "
                                   "finished work is kept")
class JobNotFoundError(ImageSearchError):
    """No background job has this task id."""

    status_code = 404

    def __init__(self, task_id: str) -> None:
        super().__init__(f"no job with task id {task_id!r}")
        self.task_id = task_id


class MissingDependencyError(ConfigError):
    """An optional feature was asked for but its package is not installed."""

    def __init__(self, feature: str, package: str, requirements: str = "requirements-scale.txt") -> None:
        super().__init__(f"{feature} needs {package}, which is not installed: pip install -r {requirements}")
        self.package = package


def require_module(module: str, feature: str, package: str = "") -> Any:
    """Import an optional dependency, or raise MissingDependencyError saying what to install."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        raise MissingDependencyError(feature, package or module) from None
