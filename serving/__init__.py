"""The read path: online lookups (client and HTTP API), point-in-time training sets, verification.

``from serving.client import FeatureClient`` is the entry point for Python users;
``kappa serve``, ``kappa history`` and ``kappa verify`` for everyone else.
"""
