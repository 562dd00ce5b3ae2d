"""The generation layer: camera trajectories, memory selection, AR/bidirectional rollouts, the engine that runs a request."""
