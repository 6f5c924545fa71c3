.PHONY: setup test run bench clean compose-offline

setup:
	bash scripts/setup.sh

test: setup
	.venv/bin/pytest $(PYTEST_ARGS)

run: setup
	.venv/bin/greenroom up

bench: setup
	.venv/bin/greenroom bench

# For `docker compose up --build` where no registry is reachable (README, "With Docker
# Compose"): a local Debian base, deploy/wheelhouse/ and a local Redis image.
compose-offline:
	bash scripts/setup.sh packages base venv wheelhouse redis

clean:
	docker ps -aq --filter label=greenroom.managed=true | xargs -r docker rm -f
