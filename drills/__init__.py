"""Fault-injection and soak drills: `make chaos`, `make soak` (short forms run in `make test`)."""
