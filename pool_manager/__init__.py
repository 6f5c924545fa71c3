"""The domain: pool specs, runtime backends, Redis state, claim and reconcile.

Imports neither Flask nor Celery; the API and the workers build on it.
"""
