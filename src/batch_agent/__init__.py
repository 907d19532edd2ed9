"""batch-agent: an open implementation of the Google Cloud Batch VM agent."""

__version__ = "0.1.0"
RELEASE_DATE = "20261202"  # the day __version__ was released (YYYYMMDD)
# What the agent reports as `metadata.version` by default: Google's server refuses agent versions
# it deems outdated, and its documented example is `cloud-batch-agent_20221103.00_p00`. We take
# that shape, with our release's date (README "The reported version").
REPORTED_VERSION = f"cloud-batch-agent_{RELEASE_DATE}.00_p00"
