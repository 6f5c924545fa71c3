"""Celery: the app and its config, the beat schedule, and the public tasks (thin)."""
