"""DialNexa API simulator: a real HTTP server for tests, local runs, a container and benchmarks."""

from service.simulator.app import CallRecord, SimConfig, Simulator, start_simulator

__all__ = ["CallRecord", "SimConfig", "Simulator", "start_simulator"]
