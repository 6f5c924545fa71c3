"""The worker's Celery app: `celery -A workers.app worker|beat|flower`."""

from pool_manager.settings import get_settings

from .config import make_celery

app = make_celery(get_settings())
app.conf.include = ["workers.tasks"]
