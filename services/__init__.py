"""The service layer: the rules of submitting, requeueing, cancelling and deleting work, per
domain (``experiments``, ``studies``), written once for every edge that calls them (the API's
routes, ``gradlab study run``'s local submission).

A service function takes the caller's ``Session`` and never commits: the edge owns the
transaction (``services.transaction``) and, after its commit, dispatches the run ids the
service returned. Every limit (``services.limits``) is met before anything is written.
"""
