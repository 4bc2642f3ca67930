"""The kernel's error tree.

Apps translate these into their own boundary errors in exactly one place (gRPC
status codes in the cloud servicer, HTTP statuses in the audit API), so every
message reads "expected X, got Y" and is safe to show to a remote caller.
"""


class CEMError(Exception):
    """Base class of every error the kernel raises on purpose."""


class ConfigError(CEMError, ValueError):
    """A configuration value is out of range or inconsistent with another."""


class DatasetError(CEMError):
    """A data set cannot be loaded as asked."""


class DatasetNotFoundError(DatasetError, FileNotFoundError):
    """The files of a data set are not where they were expected."""


class UnknownNameError(CEMError, KeyError):
    """A registry (datasets, defenses, attacks) has no entry of that name."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class BundleError(CEMError):
    """A model bundle cannot be used."""


class BundleNotFoundError(BundleError, FileNotFoundError):
    """The bundle folder or one of its files is missing."""


class BundleFormatError(BundleError):
    """The manifest is unreadable, of an unknown version, or inconsistent."""


class BundleIntegrityError(BundleError):
    """A weight file does not match the sha256 recorded in the manifest."""


class TensorCodecError(CEMError, ValueError):
    """A serialised tensor is malformed (dtype, shape, byte count, values)."""


class TensorTooLargeError(TensorCodecError):
    """The declared tensor is bigger than the receiver accepts (RESOURCE_EXHAUSTED, not a format error)."""


class MetricInputError(CEMError, ValueError):
    """Reconstruction and target cannot be compared (shape, range, values)."""


class CaptureStoreError(CEMError):
    """A capture directory or one of its shards cannot be used."""


class InvalidCaptureError(CEMError, ValueError):
    """A parsable request whose tensor header cannot be recorded faithfully (non-finite scale/offset)."""


class ServiceStartError(CEMError):
    """A child service exited, or stayed silent past its deadline, before it printed its ``LISTENING`` line."""


ECHO_LIMIT_CHARS = 80


def echo(value: str, limit: int = ECHO_LIMIT_CHARS) -> str:
    """``repr`` of a caller-supplied string, cut to ``limit`` characters, for error messages and logs.

    Callers control these strings: echoed whole, an 8 MiB model id became an 8 MiB log line and,
    past 16 KiB, a gRPC status too large for its trailer (the client saw a metadata error, not
    NOT_FOUND).
    """
    if len(value) <= limit:
        return repr(value)
    return f"{value[:limit]!r}... ({len(value)} characters)"
