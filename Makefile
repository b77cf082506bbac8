# Loopline: the only task runner. `make help` lists the targets.
SHELL := /bin/bash
PY ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.setup-stamp
PROTOS := $(shell find protos -name '*.proto')

.DEFAULT_GOAL := help

help: ## list the targets
	@grep -hE '^[a-z][a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  \033[1m%-10s\033[0m %s\n", $$1, $$2}'

$(STAMP): pyproject.toml requirements.lock
	@command -v $(PY) >/dev/null || { echo "error: $(PY) not found (Loopline needs Python 3.11)"; exit 1; }
	@test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --disable-pip-version-check -c requirements.lock -e '.[all,dev]'
	@touch $(STAMP)

setup: $(STAMP) tools/buf ## install everything into .venv (runs only when missing or stale)

tools/buf:
	@command -v npm >/dev/null || { echo "error: npm not found (needed for buf)"; exit 1; }
	npm install --silent --prefix tools @bufbuild/buf@1.75.0 >/dev/null
	@ln -sf node_modules/.bin/buf tools/buf

demo: setup ## the main job: run the whole loop on the local stack and write a report
	$(BIN)/loopline demo

demo-llm: setup ## the LLM side: the tiny Llama through vLLM, prompts, guardrails, cost, feedback, text drift
	$(BIN)/loopline demo --llm

test: setup ## the whole suite against the real local stack
	$(BIN)/pytest

lint: setup ## ruff, mypy, buf lint and buf breaking (against the released contracts)
	$(BIN)/ruff check .
	$(BIN)/mypy libs/core libs/ml libs/llm libs/stack libs/cli services/*/src
	tools/buf lint protos
	tools/buf breaking protos --against protos/released/v1.binpb

protos: setup ## regenerate libs/contracts from protos/
	$(BIN)/python scripts/gen_protos.py

docs: setup ## regenerate docs/asyncapi.yaml (every topic's schema, key and headers)
	$(BIN)/loopline docs asyncapi

bench: setup ## benchmarks against peers measured in the same run
	$(BIN)/python -m bench

stack-up: setup ## start the local stack (broker, Postgres, S3)
	$(BIN)/loopline stack up

stack-down: ## stop the local stack
	$(BIN)/loopline stack down

clean: ## remove the virtualenv, tools and local state
	-$(BIN)/loopline stack down 2>/dev/null
	rm -rf $(VENV) tools/node_modules tools/buf .loopline

.PHONY: help setup demo demo-llm test lint protos docs bench stack-up stack-down clean
