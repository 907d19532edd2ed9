"""batch-agent: an open implementation of the Google Cloud Batch VM agent."""

__version__ = "0.1.0"
