# One command to try it, one to test it. Needs Python 3.11+ as python3.
VENV   ?= .venv
CONFIG ?= config.example.toml
PYTHON ?= python3

.PHONY: run test test-slow test-postgresql lint bench peers screenshots

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)

# constraints.txt: the exact versions tested, so a green run stays green.
$(VENV)/.runtime: pyproject.toml constraints.txt | $(VENV)/bin/python
	$(VENV)/bin/pip install --quiet --constraint constraints.txt --editable .
	touch $@

$(VENV)/.test: pyproject.toml constraints.txt | $(VENV)/bin/python
	$(VENV)/bin/pip install --quiet --constraint constraints.txt --editable '.[test]'
	touch $@ $(VENV)/.runtime

run: $(VENV)/.runtime  ## the daemon on the trial configuration
	$(VENV)/bin/gateway run --config $(CONFIG)

peers:  ## the real peers the tests run: Debian's dovecot-imapd, postfix, chromium and postgresql (needs root or sudo)
	@command -v dovecot >/dev/null 2>&1 && [ -x /usr/sbin/postfix ] && [ -x /usr/bin/chromium ] && \
	  ls /usr/lib/postgresql/*/bin/postgres >/dev/null 2>&1 || { \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  echo "postfix postfix/main_mailer_type select No configuration" | $$SUDO debconf-set-selections && \
	  $$SUDO apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq dovecot-imapd postfix chromium postgresql >/dev/null; }

test: $(VENV)/.test peers  ## the suite, but for the slow runs
	$(VENV)/bin/python -m pytest -q

test-slow: $(VENV)/.test peers  ## the slow runs alone (500 messages piped through Postfix)
	$(VENV)/bin/python -m pytest -q -m slow

test-postgresql: $(VENV)/.test peers  ## the end-to-end and integration tests again, on PostgreSQL
	$(VENV)/bin/python -m pytest -q -m postgresql

lint: $(VENV)/.test  ## ruff and mypy --strict
	$(VENV)/bin/ruff check gateway tests bench
	$(VENV)/bin/ruff format --check gateway tests bench
	$(VENV)/bin/mypy gateway

bench: $(VENV)/.test peers  ## every benchmark against its baseline (about 25 min); writes BENCHMARKS.md
	$(VENV)/bin/python -m bench --write

screenshots: $(VENV)/.test  ## docs/*.png: the web inbox's main pages in Debian's chromium (make peers)
	$(VENV)/bin/python -m bench.screenshots
