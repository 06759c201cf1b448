# The two commands of the README, and the slow group CI adds. Each sets up .venv first
# (only when pyproject.toml changed).
.PHONY: chat test test-slow setup

.venv/.installed: pyproject.toml scripts/setup.sh
	bash scripts/setup.sh
	touch $@

setup: .venv/.installed

chat: .venv/.installed
	.venv/bin/posttrain run recipes/chat.yaml $(ARGS)

# Everything but the end-to-end runs of whole recipes (tests marked slow).
test: .venv/.installed
	.venv/bin/python -m pytest -q -m "not slow" $(ARGS)

# The end-to-end runs of whole recipes: minutes each.
test-slow: .venv/.installed
	.venv/bin/python -m pytest -q -m slow $(ARGS)
