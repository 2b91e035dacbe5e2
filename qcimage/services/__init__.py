"""Plain-Python services behind the views: upstream client, signing, imaging, cache."""


class ServiceError(Exception):
    """A failure a service reports to the web layer, which turns it into a JSON error.

    Subclasses set ``status`` (the HTTP status) and ``code`` (the machine-readable
    ``error`` field). ``message`` is safe to show to callers: never put upstream
    bodies, paths or library internals in it.
    """

    status = 500
    code = "internal_error"
    retry_after: int | None = None

    def __init__(self, message: str, *, details: dict | None = None):
        super().__init__(message)
        self.message = message
        self.details = details

    @property
    def headers(self) -> dict[str, str]:
        return {"Retry-After": str(self.retry_after)} if self.retry_after else {}
