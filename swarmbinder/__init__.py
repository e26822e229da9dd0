"""swarmbinder: BinderHub on Docker Swarm."""

__version__ = "0.1.0"
