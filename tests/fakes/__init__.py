"""In-process fakes of the outside systems swarmbinder talks to."""
