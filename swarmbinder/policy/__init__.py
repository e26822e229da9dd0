"""The rules that decide who may build and launch, and how much.

Each rule lives in a module of its own and is testable without HTTP. :mod:`admission` runs the
checks on a ``/build`` request in BinderHub's order; the launch flow checks the quotas.

================  =====================================================================
``clientip``      the address a request really came from (``trusted_proxies``)
``bans``          network and spec bans: the config's, plus an admin's live changes
``canonical``     one spelling of a repository URL, and the forms a spec pattern matches
``specpolicy``    which specs may launch, and their per-repo quota class
``buildtokens``   proof that a ``/build`` comes from our own loading page
``ratelimit``     BinderHub's per-IP rate limit on ``/build``
``quotas``        how many user servers may run, in all and per repository
``admission``     the order of the checks above, and what a refusal looks like
``admintoken``    the admin token: the admin API's guard, and ``/build``'s prebuild path
================  =====================================================================
"""
