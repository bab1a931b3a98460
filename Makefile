# The two commands of the README. Both create or refresh .venv first (scripts/setup.sh).
.PHONY: demo test lint

demo:
	scripts/setup.sh
	.venv/bin/locus demo

test:
	scripts/setup.sh test
	.venv/bin/ruff check .
	.venv/bin/pytest -q -p no:cacheprovider

lint:
	.venv/bin/ruff check . && .venv/bin/ruff format --check .
