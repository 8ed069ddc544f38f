# The two commands a newcomer needs: `make demo` and `make test` (see README.md).
.PHONY: setup demo test contracts bench

setup:
	bash scripts/setup.sh

demo: setup
	.venv/bin/paychan demo

# The type check runs first: a type error fails in seconds, before the suite's minutes.
test: setup
	.venv/bin/mypy
	.venv/bin/python -m pytest -q

contracts:
	node contracts/build.js

bench: setup
	.venv/bin/python bench/gas.py
