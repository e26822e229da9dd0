"""The rules that decide who may build and launch, and how much.

:mod:`admission` runs them for each ``/build`` request in BinderHub's order; each rule lives in a
module of its own and is testable without HTTP:

================  =====================================================================
``clientip``      the address a request really came from (``trusted_proxies``)
``bans``          network and spec bans: the config's, plus an admin's live changes
``specpolicy``    which specs may launch, and their per-repo quota class
``buildtokens``   proof that a ``/build`` comes from our own loading page
``ratelimit``     BinderHub's per-IP rate limit on ``/build``
``quotas``        how many user servers may run, in all and per repository
``admission``     the order of the checks above, and what a refusal looks like
================  =====================================================================
"""
