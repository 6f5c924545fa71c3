.PHONY: setup test test-no-docker run bench clean compose-offline

setup:
	bash scripts/setup.sh

# The suite as README promises it: tests that need Docker run, and fail (never skip) where
# no engine answers.
test: setup
	GREENROOM_REQUIRE_DOCKER=1 .venv/bin/pytest $(PYTEST_ARGS)

# For machines without Docker: only the venv is set up (redis-server must be installed),
# and the tests that need an engine skip, each saying why.
test-no-docker:
	bash scripts/setup.sh venv
	GREENROOM_REQUIRE_DOCKER=0 .venv/bin/pytest $(PYTEST_ARGS)

run: setup
	.venv/bin/greenroom up

bench: setup
	.venv/bin/greenroom bench

# For `docker compose up --build` where no registry is reachable (README, "With Docker
# Compose"): a local Debian base, deploy/wheelhouse/ and a local Redis image.
compose-offline:
	bash scripts/setup.sh packages base venv wheelhouse redis

# This deployment's model servers only (GREENROOM_DEPLOYMENT, default greenroom): never
# another deployment's on the same host.
clean:
	[ -x .venv/bin/greenroom ] || bash scripts/setup.sh venv
	.venv/bin/greenroom clean
