"""Prebuilds: put repositories' images into the registry before anyone launches them.

``swarmbinder prebuild SPEC... | --file FILE`` (:mod:`swarmbinder.prebuildcmd`) runs a prebuild
in three parts that live here:

- :mod:`.run`: every spec's progress and the run itself, which resolves every spec, skips
  images already in the registry and builds the rest over a back end;
- :mod:`.backends`: the two back ends, the swarm driven directly from a config file or a
  running swarmbinder asked as its administrator;
- :mod:`.jobs`: a prebuild as a ``replicated-job`` service on the swarm, and the listing and
  removal of such jobs that the admin API offers.

Nothing is re-exported here, so the service can import :mod:`.jobs` without the rest.
"""
