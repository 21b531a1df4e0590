# Two entry points on a fresh Debian machine: `make demo` and `make test`.
# Both install what is missing (Debian packages, then a .venv with the project), then run.

SHELL := /bin/bash
# Debian's own interpreter (when it is 3.11 or later, as the project needs), the one whose python3-venv and python3-dev the Makefile installs (pyscard is
# built against those headers), even where another python3 comes first on PATH (pyenv, conda). It also
# runs the seller about 12 % cheaper than a shared-library build (docs/performance.md, "The interpreter").
# `make venv PY=python3.12` chooses another; `make clean` first when the venv was made with another one.
PY ?= $(shell /usr/bin/python3 -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null \
        && echo /usr/bin/python3 || echo python3)
VENV := .venv
VPY := $(VENV)/bin/python
DEB_PACKAGES := python3 python3-venv python3-dev pcscd vsmartcard-vpcd softhsm2 opensc pcsc-tools swig libpcsclite-dev tmux \
                libicu-dev pkg-config g++ postgresql chromium chromium-driver
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
PYTEST_ARGS ?=
# The suite in two pytest-xdist workers: most of its time is waiting (child processes, servers, pcscd, TLS
# round trips), not computing, so two workers overlap it on two cores. Every test that needs pcscd (mark
# `pcsc`) runs on one worker, one after the other (tests/conftest.py); `make test XDIST=` runs in one process.
XDIST ?= -n 2 --dist loadgroup

.PHONY: all demo test lint system venv clean

all: test

system:
	@missing=""; for p in $(DEB_PACKAGES); do \
	  dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q 'install ok installed' || missing="$$missing $$p"; \
	done; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:$$missing"; \
	  $(SUDO) apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq $$missing >/dev/null; \
	else echo "Debian packages present"; fi

$(VPY):
	$(PY) -m venv $(VENV)

$(VENV)/.installed: pyproject.toml | $(VPY)
	$(VPY) -m pip install -q --upgrade pip
	$(VPY) -m pip install -q -e '.[test]'
	touch $@

venv: system $(VENV)/.installed
	@want=$$(readlink -f "$$(command -v $(PY))"); have=$$(readlink -f "$$($(VPY) -c 'import sys; print(sys._base_executable)')"); \
	[ "$$want" = "$$have" ] || echo "note: $(VENV) runs $$have, not $(PY) ($$want): 'make clean' and make again to change it"

demo: venv
	$(VENV)/bin/semper demo

test: venv lint
	$(VPY) -m pytest -q $(XDIST) $(PYTEST_ARGS)

# ruff over the whole tree; mypy over the installed package through a tree of links (.lint/semper/<folder>),
# because the folders install as one `semper` namespace (pyproject.toml, package-dir) that mypy cannot see
# through an editable install
LINKED := client hardware hsm card_applet_sim bench chaos
lint: venv
	$(VENV)/bin/ruff check .
	@mkdir -p .lint/semper && for d in $(LINKED); do ln -sfn ../../$$d .lint/semper/$$d; done
	cd .lint && ../$(VENV)/bin/mypy -p semper --config-file ../pyproject.toml

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis *.egg-info
