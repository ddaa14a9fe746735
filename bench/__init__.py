"""Benchmarks of the worker against the local RabbitMQ and the DialNexa simulator (`python -m bench`)."""
