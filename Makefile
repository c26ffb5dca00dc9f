# The two set-up commands of the README: `make run` and `make test`. Both install what they need.
.PHONY: run test

run:
	@scripts/setup.sh
	.venv/bin/jouletrace run

test:
	@scripts/setup.sh --test
	.venv/bin/pytest
