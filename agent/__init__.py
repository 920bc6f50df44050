"""The seismo agent: config, scheduler, metrics, HTTP API, experiment runner and faults."""

__version__ = "0.1.0"
