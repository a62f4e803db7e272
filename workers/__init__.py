"""The data plane: worker processes that generate MEIs for the tasks the scheduler sends."""
