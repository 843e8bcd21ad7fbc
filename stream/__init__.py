"""Online learning on Kafka event streams with River: predict, publish, then learn."""

__version__ = "0.1.0"
