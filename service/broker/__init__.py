"""The aio-pika edge: connection and reconnects, topology, the publisher, one delivery's intake,
the one place an outcome becomes a broker action (`settle`), and the worker's sessions."""
