"""The demo: a data set whose rules match now, and a local inbox for what they send. Not part of the service."""
