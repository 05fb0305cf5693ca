"""fairuse detector: score AI gateway request metadata and turn findings into decisions."""

__version__ = "0.1.0"
