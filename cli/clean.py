"""`greenroom clean` (`make clean`): remove this deployment's model servers, the Docker
containers labelled greenroom.owner=<deployment> and the process servers in its state
folder, and nothing of any other deployment on the host."""


import click

from pool_manager.runtimes.docker import DockerRuntime
from pool_manager.runtimes.process import ProcessRuntime
from pool_manager.settings import get_settings

from .secretfile import HOME


@click.command()
def clean() -> None:
    """Remove this deployment's model servers (containers and local processes), which
    outlive `up` and `docker compose down` on purpose."""
    settings = get_settings()
    removed = _remove(DockerRuntime(settings.deployment, settings.docker_host), docker=True)
    state_dir = settings.state_dir or (HOME / "state" if (HOME / "state").is_dir() else None)
    removed += _remove(ProcessRuntime(settings.deployment, state_dir))
    click.echo(f"removed {removed} model server(s) of deployment {settings.deployment!r}")


def _remove(runtime, docker: bool = False) -> int:
    if docker and not runtime.ping():
        return 0  # no engine: no containers
    instances = runtime.list_managed()
    for instance in instances:
        runtime.destroy(instance.id)
    return len(instances)
