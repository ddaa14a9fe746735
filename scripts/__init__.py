"""Project scripts: docs generators and checks (not part of the service)."""
