# The two commands of the README. Each sets up .venv first (only when pyproject.toml changed).
.PHONY: chat test setup

.venv/.installed: pyproject.toml scripts/setup.sh
	bash scripts/setup.sh
	touch $@

setup: .venv/.installed

chat: .venv/.installed
	.venv/bin/posttrain run recipes/chat.yaml $(ARGS)

test: .venv/.installed
	.venv/bin/python -m pytest -q $(ARGS)
