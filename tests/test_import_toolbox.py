"""Imported Istio ``fault`` and ``retries`` and Gateway API ``retry``/``timeouts`` (issue 16): what
each becomes on the backend (model.Fault, retries, retry_on, timeout) and every warning where the
source's meaning is not condroute's, with its exact FILE:LINE:COLUMN text. Through a live mitmdump:
test_import_toolbox_live.py."""
from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from condroute.errors import RulesError
from condroute.load.istio_answer import status_retry_on
from condroute.model import Fault
from condroute.rules import load_rules

VS_HEAD = """\
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: t}
spec:
  hosts: [svc]
  http:
"""
HR_HEAD = """\
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: r}
spec:
  hostnames: [svc]
  rules:
"""
IMPORTING = """\
version: 1
upstreams:
  svc/v1: http://127.0.0.1:9101
  svc-b: http://127.0.0.1:9102
imports: [in.yaml]
"""
ROUTE = "  route: [{destination: {host: svc, subset: v1}}]\n"
REF = "  backendRefs: [{name: svc-b, port: 1}]\n"


def load(tmp_path: Path, rule: str, head: str = VS_HEAD):
    """The rules of a one-rule VirtualService (or HTTPRoute), ``rule`` written at column 3 of line
    7 (``- ...`` at 7:3, its first key at 7:5) → (the rule's backend, located warning texts)."""
    text = textwrap.dedent(rule)
    (tmp_path / "in.yaml").write_text(head + textwrap.indent(text, "  "))
    (tmp_path / "main.yaml").write_text(IMPORTING)
    rules = load_rules(str(tmp_path / "main.yaml"))
    found = [str(w).replace(str(tmp_path) + "/", "") for w in rules.warnings]
    return rules.routes[0].backends[0], found


def refused(tmp_path: Path, rule: str, head: str = VS_HEAD) -> list[str]:
    text = textwrap.dedent(rule)
    (tmp_path / "in.yaml").write_text(head + textwrap.indent(text, "  "))
    (tmp_path / "main.yaml").write_text(IMPORTING)
    with pytest.raises(RulesError) as e:
        load_rules(str(tmp_path / "main.yaml"))
    return [str(p).replace(str(tmp_path) + "/", "") for p in e.value.problems]


# -- Istio fault --------------------------------------------------------------------------------------
@pytest.mark.parametrize("fault, expected", [
    ("{delay: {fixedDelay: 5s, percentage: {value: 10}}}", Fault(delay=5.0, delay_percent=10.0)),
    ("{delay: {fixedDelay: 250ms, percent: 30}}", Fault(delay=0.25, delay_percent=30.0)),   # deprecated integer
    ("{delay: {fixedDelay: 1s, percent: 30, percentage: {value: 0.5}}}", Fault(delay=1.0, delay_percent=0.5)),
    ("{abort: {httpStatus: 503, percentage: {value: 10}}}", Fault(abort=503, abort_percent=10.0)),
    ("{abort: {httpStatus: 418, percentage: {}}}", Fault(abort=418, abort_percent=0.0)),   # proto3's 0
    ("{delay: {fixedDelay: 2s, percentage: {value: 100}}, abort: {httpStatus: 500, percentage: {value: 50}}}",
     Fault(delay=2.0, delay_percent=100.0, abort=500, abort_percent=50.0)),
])
def test_fault_becomes_the_backend_fault(tmp_path, fault, expected):
    b, found = load(tmp_path, f"- fault: {fault}\n{ROUTE}")
    assert b.fault == expected
    assert found == []


def test_fault_without_percentage_injects_nothing_as_envoy_does(tmp_path):
    """Istio leaves Envoy's percentage unset and Envoy injects then into 0% of requests
    (istio/istio#36303: the doc's "all requests" was wrong). Imported as 0%, and said."""
    b, found = load(tmp_path, f"- fault: {{delay: {{fixedDelay: 5s}}, abort: {{httpStatus: 503}}}}\n{ROUTE}")
    assert b.fault == Fault(delay=5.0, delay_percent=0.0, abort=503, abort_percent=0.0)
    assert found == [
        "in.yaml:7:20: t#1: fault delay has no percentage: Istio delays no request then (Envoy's default "
        "is 0%); write percentage: {value: 100} to delay every request",
        "in.yaml:7:45: t#1: fault abort has no percentage: Istio aborts no request then (Envoy's default "
        "is 0%); write percentage: {value: 100} to abort every request"]


def test_a_fault_on_a_rule_with_several_match_blocks_is_on_each(tmp_path):
    b, _ = load(tmp_path, "- match: [{uri: {prefix: /a}}, {uri: {prefix: /b}}]\n"
                          "  fault: {abort: {httpStatus: 502, percentage: {value: 100}}}\n" + ROUTE)
    rules = load_rules(str(tmp_path / "main.yaml"))
    assert [(r.name, r.backends[0].fault) for r in rules.routes] == [
        ("t#1#1", Fault(abort=502, abort_percent=100.0)), ("t#1#2", Fault(abort=502, abort_percent=100.0)),
        ("t#no-match", None)]


@pytest.mark.parametrize("fault, message", [
    ("{abort: {grpcStatus: UNAVAILABLE, percentage: {value: 100}}}",
     "in.yaml:7:21: t#1: fault abort grpcStatus UNAVAILABLE is not imported: condroute aborts with an HTTP "
     "status (httpStatus) only; these requests are forwarded"),
    ("{abort: {http2Error: REFUSED_STREAM, percentage: {value: 100}}}",
     "in.yaml:7:21: t#1: fault abort http2Error REFUSED_STREAM is not imported: condroute aborts with an "
     "HTTP status (httpStatus) only; these requests are forwarded"),
    ("{delay: {exponentialDelay: 1s, percentage: {value: 100}}}",
     "in.yaml:7:21: t#1: fault delay exponentialDelay is not imported (Istio does not apply it either)"),
])
def test_faults_condroute_cannot_inject_are_warned_and_left_out(tmp_path, fault, message):
    b, found = load(tmp_path, f"- fault: {fault}\n{ROUTE}")
    assert b.fault is None
    assert found == [message]


@pytest.mark.parametrize("fault, message", [
    ("{abort: {httpStatus: 700, percentage: {value: 1}}}",
     "in.yaml:7:33: t#1: fault abort httpStatus must be an HTTP status from 200 to 599, not a number (700)"),
    ("{abort: {httpStatus: 503, percentage: {value: 150}}}",
     "in.yaml:7:58: t#1: fault abort percentage must be {value: N} with N from 0 to 100, not a number (150)"),
    ("{abort: {httpStatus: 503, grpcStatus: UNAVAILABLE}}",
     "in.yaml:7:38: t#1: fault abort: use one of httpStatus, grpcStatus and http2Error (Istio refuses httpStatus "
     "and grpcStatus together)"),
    ("{abort: {percentage: {value: 1}}}", "in.yaml:7:20: t#1: fault abort needs httpStatus"),
    ("{abort: {httpStatus: 503, percent: 10}}", "in.yaml:7:38: unknown key 'percent' in t#1: fault abort"),
    ("{delay: {percentage: {value: 1}}}", "in.yaml:7:20: t#1: fault delay needs fixedDelay"),
    ("{delay: {fixedDelay: soon, percent: 1}}", "in.yaml:7:33: t#1: fault delay fixedDelay must be a duration"),
    ("{delay: {fixedDelay: 1s, percent: 101}}",
     "in.yaml:7:46: t#1: fault delay percent must be a whole number from 0 to 100, not a number (101)"),
])
def test_fault_refusals_are_located(tmp_path, fault, message):
    found = refused(tmp_path, f"- fault: {fault}\n{ROUTE}")
    assert any(e.startswith(message) for e in found), found


# -- Istio retries ------------------------------------------------------------------------------------
@pytest.mark.parametrize("retries, expected", [
    ('{attempts: 3, retryOn: "5xx"}', (3, {"5xx"}, None)),
    ('{attempts: 3, retryOn: "gateway-error,connect-failure"}', (3, {"gateway-error", "connect-failure"}, None)),
    ('{attempts: 2, retryOn: "reset,connect-failure"}', (2, {"reset", "connect-failure"}, None)),
    # Envoy's reset covers a connection failure (retry_state_impl: RETRY_ON_RESET retries every reset reason)
    ('{attempts: 2, retryOn: "reset"}', (2, {"reset", "connect-failure"}, None)),
    ('{attempts: 2, retryOn: "502,503,504"}', (2, {"gateway-error"}, None)),            # exactly gateway-error
    ('{attempts: 2, retryOn: "5xx,500,503"}', (2, {"5xx"}, None)),                     # codes 5xx covers
    ('{attempts: 1, retryOn: "connect-failure", perTryTimeout: 2s}', (1, {"connect-failure"}, 2.0)),
    ('{attempts: 0, retryOn: "5xx"}', (0, {"connect-failure"}, None)),                 # 0: no retries (Istio)
])
def test_retries_become_retries_and_retry_on(tmp_path, retries, expected):
    b, found = load(tmp_path, f"- retries: {retries}\n{ROUTE}")
    assert (b.retries, set(b.retry_on), b.timeout) == expected
    assert found == []


def test_no_retries_is_istios_default_as_far_as_condroute_has_it(tmp_path):
    """Istio's default policy (pilot/pkg/networking/core/route/retry/retry.go): 2 retries on
    connect-failure, refused-stream, unavailable, cancelled, retriable-status-codes (with no codes).
    Imported: 2 retries on connect failure (documented, not warned on every rule)."""
    b, found = load(tmp_path, f"- match: [{{uri: {{prefix: /}}}}]\n{ROUTE}")
    assert (b.retries, b.retry_on, b.timeout) == (2, frozenset({"connect-failure"}), None)
    assert found == []


@pytest.mark.parametrize("retries, expected, messages", [
    ("{attempts: 3}", (3, {"connect-failure"}), [
        "in.yaml:7:15: t#1: retries without retryOn: Istio retries on connect-failure, refused-stream, "
        "unavailable and cancelled (its default retryOn); condroute retries connect failures only (refused-stream "
        "is HTTP/2's, unavailable and cancelled are gRPC statuses)"]),
    ("{attempts: 30, retryOn: 5xx}", (10, {"5xx"}), [
        "in.yaml:7:25: t#1: retries attempts 30: condroute retries at most 10 times"]),
    ('{attempts: 2, retryOn: "5xx,refused-stream,retriable-4xx,reset-before-request"}', (2, {"5xx"}), [
        "in.yaml:7:37: t#1: retryOn refused-stream,retriable-4xx,reset-before-request is not imported: "
        "condroute retries on connect-failure, reset, 5xx and gateway-error only"]),
    ('{attempts: 2, retryOn: "connect-failure,unavailable,cancelled"}', (2, {"connect-failure"}), [
        "in.yaml:7:37: t#1: retryOn unavailable,cancelled is not imported: these retry on a gRPC status "
        "(x-envoy-retry-grpc-on), which condroute does not read"]),
    ('{attempts: 2, retryOn: "connect-failure,503"}', (2, {"connect-failure", "gateway-error"}), [
        "in.yaml:7:37: t#1: retryOn 503: 503 is retried as gateway-error, which retries 502 and 504 too"]),
    # alone, retriable-status-codes retries nothing (Istio's policy has no status codes of its own)
    ('{attempts: 2, retryOn: "retriable-status-codes,connect-failure"}', (2, {"connect-failure"}), [
        "in.yaml:7:37: t#1: retryOn retriable-status-codes is not imported: condroute retries on connect-failure, "
        "reset, 5xx and gateway-error only"]),
    ('{attempts: 2, retryOn: "retriable-status-codes,502,503,504"}', (2, {"gateway-error"}), []),
    ('{attempts: 2, retryOn: "reset,500,503,429"}', (2, {"reset", "connect-failure", "gateway-error"}), [
        "in.yaml:7:37: t#1: retryOn 429, 500 and 503: 503 is retried as gateway-error, which retries 502 "
        "and 504 too; 429 and 500 are not retried (condroute's retry_on names 5xx and gateway-error, not single "
        "statuses)"]),
    ('{attempts: 2, retryOn: "refused-stream,unavailable"}', (0, {"connect-failure"}), [
        "in.yaml:7:37: t#1: retryOn refused-stream is not imported: condroute retries on connect-failure, "
        "reset, 5xx and gateway-error only",
        "in.yaml:7:37: t#1: retryOn unavailable is not imported: these retry on a gRPC status "
        "(x-envoy-retry-grpc-on), which condroute does not read",
        "in.yaml:7:37: t#1: retries are not imported: retryOn 'refused-stream,unavailable' names nothing "
        "condroute retries on (connect-failure, reset, 5xx, gateway-error), so no request is retried"]),
    ("{attempts: 2, retryOn: 5xx, backoff: 1s, retryRemoteLocalities: true}", (2, {"5xx"}), [
        "in.yaml:7:42: t#1: retries backoff 1s is not imported: condroute waits 50 ms before the second "
        "attempt, doubling up to 1 s",
        "in.yaml:7:55: t#1: retries retryRemoteLocalities is not imported: a condroute upstream is one "
        "address (there is no other host or locality to retry on)"]),
])
def test_retries_condroute_cannot_follow_exactly_are_warned(tmp_path, retries, expected, messages):
    b, found = load(tmp_path, f"- retries: {retries}\n{ROUTE}")
    assert (b.retries, set(b.retry_on)) == expected
    assert found == messages


@pytest.mark.parametrize("rule, timeout, messages", [
    # perTryTimeout alone is condroute's timeout exactly (each attempt, the first one included)
    ('- retries: {attempts: 2, retryOn: 5xx, perTryTimeout: 3s}\n', 3.0, []),
    # timeout alone with retries on answers: Istio's bounds all attempts, condroute's each one
    ('- retries: {attempts: 2, retryOn: 5xx}\n  timeout: 4s\n', 4.0, [
        "in.yaml:8:5: t#1: timeout 4s: Istio bounds the whole request by it, retries included; condroute bounds each "
        "attempt by 4s, so 3 attempts may take up to 12.15s (the waits between them included)"]),
    ('- retries: {attempts: 2, retryOn: 5xx, perTryTimeout: 1.5s}\n  timeout: 4s\n', 1.5, [
        "in.yaml:8:5: t#1: timeout 4s: Istio bounds the whole request by it, retries included; condroute bounds each "
        "attempt by 1.5s, so 3 attempts may take up to 4.65s (the waits between them included)"]),
    # 3 attempts of 1s and the waits fit in 4s: exact
    ('- retries: {attempts: 2, retryOn: 5xx, perTryTimeout: 1s}\n  timeout: 4s\n', 1.0, []),
    # connect failures only: no answer is waited for twice, the timeout is the same
    ('- retries: {attempts: 2, retryOn: connect-failure}\n  timeout: 4s\n', 4.0, []),
])
def test_per_try_timeout_and_timeout(tmp_path, rule, timeout, messages):
    b, found = load(tmp_path, rule + ROUTE)
    assert b.timeout == timeout
    assert found == messages


def test_the_imported_backend_has_the_runtime_fields(tmp_path):
    """The compiler marks a backend with a fault `extra` (the engine draws it) and keeps retry_on."""
    b, _ = load(tmp_path, "- fault: {abort: {httpStatus: 503, percentage: {value: 100}}}\n"
                          '  retries: {attempts: 1, retryOn: "gateway-error"}\n' + ROUTE)
    assert b.extra and b.fault.abort == 503 and b.retry_on == frozenset({"gateway-error"})


# -- Gateway API HTTPRoute retry (GEP-1731) -----------------------------------------------------------
@pytest.mark.parametrize("retry, expected, messages", [
    ("{codes: [502, 503, 504], attempts: 3}", (3, {"connect-failure", "reset", "gateway-error"}), []),
    ("{attempts: 1}", (1, {"connect-failure", "reset"}), []),                 # connection errors only
    ("{codes: [502, 503, 504], attempts: 1, backoff: 50ms}", (1, {"connect-failure", "reset", "gateway-error"}), []),
    ("{codes: [503], attempts: 2, backoff: 10ms}", (2, {"connect-failure", "reset", "gateway-error"}), [
        "in.yaml:7:20: HTTPRoute r rule 1: retry codes 503: 503 is retried as gateway-error, which retries 502 and "
        "504 too"]),
    ("{codes: [500, 502], attempts: 2}", (2, {"connect-failure", "reset", "gateway-error"}), [
        "in.yaml:7:20: HTTPRoute r rule 1: retry codes 500 and 502: 502 is retried as gateway-error, which retries "
        "503 and 504 too; 500 is not retried (condroute's retry_on names 5xx and gateway-error, not single statuses)"]),
    ("{codes: [500], attempts: 2}", (2, {"connect-failure", "reset"}), [
        "in.yaml:7:20: HTTPRoute r rule 1: retry codes 500: 500 is not retried (condroute's retry_on names 5xx and "
        "gateway-error, not single statuses)"]),
    ("{codes: [503]}", (2, {"connect-failure", "reset", "gateway-error"}), [
        "in.yaml:7:12: HTTPRoute r rule 1: retry without attempts: the number of retries is implementation-specific; "
        "condroute retries 2 times, as Istio does",
        "in.yaml:7:20: HTTPRoute r rule 1: retry codes 503: 503 is retried as gateway-error, which retries 502 and "
        "504 too"]),
    ("{codes: [502, 503, 504], attempts: 20}", (10, {"connect-failure", "reset", "gateway-error"}), [
        "in.yaml:7:47: HTTPRoute r rule 1: retry attempts 20: condroute retries at most 10 times"]),
    ("{codes: [502, 503, 504], attempts: 1, backoff: 1s}", (1, {"connect-failure", "reset", "gateway-error"}), [
        "in.yaml:7:59: HTTPRoute r rule 1: retry backoff 1s is not imported: condroute waits 50 ms before the second "
        "attempt, doubling up to 1 s"]),
    ("{codes: [503], attempts: 0}", (0, {"connect-failure"}), []),
])
def test_httproute_retry(tmp_path, retry, expected, messages):
    b, found = load(tmp_path, f"- retry: {retry}\n{REF}", head=HR_HEAD)
    assert (b.retries, set(b.retry_on)) == expected
    assert found == messages


def test_all_5xx_codes_are_5xx(tmp_path):
    assert status_retry_on(set(range(500, 600)), set()) == ({"5xx"}, None)
    assert status_retry_on({502, 503, 504}, set()) == ({"gateway-error"}, None)
    assert status_retry_on({503}, {"gateway-error"}) == (set(), None)


@pytest.mark.parametrize("rule, timeout, messages", [
    ("- retry: {codes: [502, 503, 504], attempts: 2}\n  timeouts: {backendRequest: 2s}\n", 2.0, []),
    ("- retry: {codes: [502, 503, 504], attempts: 2}\n  timeouts: {request: 7s, backendRequest: 2s}\n", 2.0, []),
    ("- retry: {codes: [502, 503, 504], attempts: 2}\n  timeouts: {request: 6s, backendRequest: 2s}\n", 2.0, [
        "in.yaml:8:16: HTTPRoute r rule 1: timeouts.request 6s bounds the whole request, retries included; condroute "
        "bounds each attempt by 2s, so 3 attempts may take up to 6.15s (the waits between them included)"]),
    ("- retry: {codes: [502, 503, 504], attempts: 2}\n  timeouts: {request: 6s}\n", 6.0, [
        "in.yaml:8:16: HTTPRoute r rule 1: timeouts.request 6s bounds the whole request, retries included; condroute "
        "bounds each attempt by 6s, so 3 attempts may take up to 18.15s (the waits between them included)"]),
    ("- timeouts: {request: 6s, backendRequest: 2s}\n", 2.0, []),
])
def test_httproute_timeouts_with_retry(tmp_path, rule, timeout, messages):
    b, found = load(tmp_path, rule + REF, head=HR_HEAD)
    assert b.timeout == timeout
    assert found == messages


@pytest.mark.parametrize("retry, message", [
    ("{codes: [200]}", "in.yaml:7:21: retry codes: a number (200) is not an HTTP status from 400 to 599"),
    ("{attempts: -1}", "in.yaml:7:23: retry attempts must be a whole number >= 0, not a number (-1)"),
    ("{backoff: 1.5s}", "in.yaml:7:22: retry.backoff must be a Gateway API duration"),
    ("{tries: 2}", "in.yaml:7:13: unknown key 'tries' in retry"),
])
def test_httproute_retry_refusals(tmp_path, retry, message):
    found = refused(tmp_path, f"- retry: {retry}\n{REF}", head=HR_HEAD)
    assert any(e.startswith(message) for e in found), found
