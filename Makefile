.PHONY: setup test run bench clean

setup:
	bash scripts/setup.sh

test: setup
	.venv/bin/pytest $(PYTEST_ARGS)

run: setup
	.venv/bin/greenroom up

bench: setup
	.venv/bin/greenroom bench

clean:
	docker ps -aq --filter label=greenroom.managed=true | xargs -r docker rm -f
