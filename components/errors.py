"""One exception hierarchy for imgpipe: every user-facing failure is an ImgpipeError."""


class ImgpipeError(Exception):
    """Base of every error the CLI turns into exit code 2 and one actionable line."""

    exit_code = 2


class ConfigError(ImgpipeError):
    """The config file or an override is missing, malformed or inconsistent."""


class AccessError(ConfigError):
    """Storage or a service refused this machine: no usable credentials, or access
    denied. `reason` says which, without the fix, for a check that can be left to
    where the pipeline runs (`imgpipe compile` in CI)."""

    def __init__(self, message: str, reason: str = "") -> None:
        super().__init__(message)
        self.reason = reason or message


class RegistryError(ConfigError):
    """A model registry's file (ledger, model card, pipeline state) is damaged; the
    message names it and the repair."""


class DataError(ImgpipeError):
    """The input data cannot be used: empty source, missing class, too many bad files."""


class ArtifactError(ImgpipeError):
    """An artifact directory is missing, incomplete or of the wrong type."""


class ValidationFailed(ImgpipeError):
    """Validation found error-severity anomalies; the run stops before transform."""

    exit_code = 3


class NotBlessed(ImgpipeError):
    """The candidate model did not pass its thresholds; nothing is pushed."""

    exit_code = 4


class TrainingError(ImgpipeError):
    """Training diverged (NaN loss) or produced no usable model."""


class ServingError(ImgpipeError):
    """A model server did not reach the state asked of it (a version did not load)."""
