package sampleapi_test

import data.sampleapi

# Identities, shaped as the gateway's authentication produces them.

anonymous := {
	"authenticated": false,
	"method": "none",
	"subject": "",
	"issuer": "",
	"spiffe_id": "",
	"key_id": "",
	"groups": [],
	"claims": {},
}

identity(subject, groups) := {
	"authenticated": true,
	"method": "mtls",
	"subject": subject,
	"issuer": "",
	"spiffe_id": sprintf("spiffe://example.com/%s", [subject]),
	"key_id": "",
	"groups": groups,
	"claims": {},
}

platform_admin := identity("platform-admin", ["platform-admin"])

auditor := identity("audit-bot", ["auditor"])

lead_payments := identity("alice", ["team-lead", "team:payments"])

ci_payments := identity("ci-payments", ["ci", "team:payments"])

# eval(who, method, path, query, body) is the decision for one call. Segments
# are derived the way the gateway derives them: split on "/", empty segments
# dropped, each percent-decoded.
eval(who, method, path, query, body) := d if {
	d := sampleapi.decision with input as {
		"request": {
			"id": "test",
			"method": method,
			"scheme": "https",
			"host": "nhi.example.com",
			"path": path,
			"raw_path": path,
			"segments": [urlquery.decode(s) | some s in split(path, "/"); s != ""],
			"query": query,
			"headers": {"content-type": "application/json"},
			"body": body,
			"body_truncated": false,
			"remote_addr": "127.0.0.1:50000",
		},
		"identity": who,
		"route": {"name": "sampleapi", "labels": {"api": "sampleapi"}},
	}
}

call(who, method, path, body) := eval(who, method, path, {}, body)

allowed(d) if d.allow == true

denied(d, reason) if {
	d.allow == false
	d.reason == reason
	d.status == 403
}

new_account(id, team) := {"id": id, "team": team, "owner": "alice@example.com", "description": "test"}

# Everyone.

test_healthz_is_open if {
	d := call(anonymous, "GET", "/healthz", null)
	allowed(d)
	d.headers == {"X-Policy-Team": ""}
}

test_healthz_is_get_only if {
	call(anonymous, "POST", "/healthz", null).status == 401
}

test_unauthenticated_gets_401[path] if {
	some path in ["/v1/service-accounts", "/v1/service-accounts/payments.deployer", "/v1/events"]
	d := call(anonymous, "GET", path, null)
	d.allow == false
	d.reason == "unauthenticated"
	d.status == 401
	not d.headers
}

test_unverified_groups_do_not_count if {
	who := object.union(anonymous, {"groups": ["platform-admin"]})
	call(who, "DELETE", "/v1/service-accounts/payments.deployer", null).status == 401
}

# platform-admin.

test_platform_admin_does_everything[name] if {
	some name, c in {
		"reactivate": ["POST", "/v1/service-accounts/payments.deployer/reactivate", null],
		"create binding": ["POST", "/v1/bindings", {"account": "payments.deployer", "role": "deployer", "resource": "*"}],
		"delete binding": ["DELETE", "/v1/bindings/b-1", null],
		"events": ["GET", "/v1/events", null],
		"delete account": ["DELETE", "/v1/service-accounts/billing.exporter", null],
		"long-lived key": ["POST", "/v1/service-accounts/billing.exporter/keys", {}],
	}
	allowed(call(platform_admin, c[0], c[1], c[2]))
}

test_platform_admin_header_names_account_team if {
	d := call(platform_admin, "POST", "/v1/service-accounts/payments.deployer/reactivate", null)
	d.headers == {"X-Policy-Team": "payments"}
	d.labels == {"action": "account.reactivate", "team": "payments"}
}

# auditor.

test_auditor_reads_everything_under_v1[path] if {
	some path in [
		"/v1/service-accounts",
		"/v1/service-accounts/billing.exporter",
		"/v1/service-accounts/billing.exporter/keys",
		"/v1/bindings",
		"/v1/events",
	]
	allowed(call(auditor, "GET", path, null))
}

test_auditor_cannot_write[name] if {
	some name, c in {
		"suspend": ["POST", "/v1/service-accounts/payments.deployer/suspend"],
		"delete": ["DELETE", "/v1/service-accounts/payments.deployer"],
		"binding": ["POST", "/v1/bindings"],
	}
	denied(call(auditor, c[0], c[1], {}), "auditors are read-only")
}

test_auditor_reads_only_v1 if {
	denied(call(auditor, "GET", "/admin", null), "no rule permits this request")
	denied(call(auditor, "HEAD", "/v1/events", null), "no rule permits this request")
}

# team-lead.

test_team_lead_manages_own_team[name] if {
	some name, c in {
		"create account": ["POST", "/v1/service-accounts", new_account("payments.reporter", "payments")],
		"read account": ["GET", "/v1/service-accounts/payments.deployer", null],
		"suspend": ["POST", "/v1/service-accounts/payments.deployer/suspend", null],
		"delete": ["DELETE", "/v1/service-accounts/payments.deployer", null],
		"create key, any ttl": ["POST", "/v1/service-accounts/payments.deployer/keys", {"ttl_seconds": 2592000}],
		"create key, no ttl": ["POST", "/v1/service-accounts/payments.deployer/keys", {}],
		"list keys": ["GET", "/v1/service-accounts/payments.deployer/keys", null],
		"rotate key": ["POST", "/v1/service-accounts/payments.deployer/keys/k-1/rotate", null],
		"revoke key": ["DELETE", "/v1/service-accounts/payments.deployer/keys/k-1", null],
	}
	d := call(lead_payments, c[0], c[1], c[2])
	allowed(d)
	d.headers == {"X-Policy-Team": "payments"}
}

test_team_lead_lists_own_team if {
	d := eval(lead_payments, "GET", "/v1/service-accounts", {"team": ["payments"]}, null)
	allowed(d)
	d.headers == {"X-Policy-Team": "payments"}
}

test_team_lead_list_needs_own_team_filter if {
	reason := "list requests must be filtered by ?team=<your team>"
	denied(eval(lead_payments, "GET", "/v1/service-accounts", {}, null), reason)
	denied(eval(lead_payments, "GET", "/v1/service-accounts", {"team": ["payments", "billing"]}, null), reason)
	denied(
		eval(lead_payments, "GET", "/v1/service-accounts", {"team": ["billing"]}, null),
		"account belongs to team \"billing\", not the caller's",
	)
}

test_team_lead_cannot_touch_other_team[name] if {
	some name, c in {
		"create account": ["POST", "/v1/service-accounts", new_account("billing.reporter", "billing")],
		"suspend": ["POST", "/v1/service-accounts/billing.exporter/suspend", null],
		"delete": ["DELETE", "/v1/service-accounts/billing.exporter", null],
		"create key": ["POST", "/v1/service-accounts/billing.exporter/keys", {"ttl_seconds": 3600}],
		"revoke key": ["DELETE", "/v1/service-accounts/billing.exporter/keys/k-1", null],
	}
	d := call(lead_payments, c[0], c[1], c[2])
	denied(d, "account belongs to team \"billing\", not the caller's")
	not d.headers
}

test_team_lead_create_body_must_agree[name] if {
	some name, body in {
		"id of another team": new_account("billing.reporter", "payments"),
		"id without team": new_account("reporter", "payments"),
		"team missing": json.remove(new_account("payments.reporter", "payments"), ["team"]),
		"id missing": json.remove(new_account("payments.reporter", "payments"), ["id"]),
	}
	denied(call(lead_payments, "POST", "/v1/service-accounts", body), "account id must be <team>.<name> with the body's team")
}

test_team_lead_create_needs_body if {
	denied(call(lead_payments, "POST", "/v1/service-accounts", null), "request body must be a complete JSON object")
}

test_team_lead_cannot_reactivate if {
	d := call(lead_payments, "POST", "/v1/service-accounts/payments.deployer/reactivate", null)
	denied(d, "team-lead may not perform account.reactivate")
}

test_team_lead_cannot_manage_bindings_or_events[name] if {
	some name, c in {
		"create binding": ["POST", "/v1/bindings", {"account": "payments.deployer", "role": "admin", "resource": "*"}],
		"list bindings": ["GET", "/v1/bindings", null],
		"events": ["GET", "/v1/events", null],
	}
	denied(call(lead_payments, c[0], c[1], c[2]), "no rule permits this request")
}

test_malformed_account_ids_are_denied[path] if {
	some path in [
		"/v1/service-accounts/payments/suspend",
		"/v1/service-accounts/payments.a.b/suspend",
		"/v1/service-accounts/Payments.deployer/suspend",
		"/v1/service-accounts/payments.deployer%2F..%2Fbilling.exporter/suspend",
	]
	denied(call(lead_payments, "POST", path, null), "account id must be <team>.<name>")
}

test_team_lead_without_team if {
	who := identity("bob", ["team-lead"])
	d := call(who, "POST", "/v1/service-accounts/payments.deployer/suspend", null)
	denied(d, "team-lead identity has no team:<name> group")
}

# ci.

test_ci_mints_short_lived_keys[name] if {
	some name, c in {
		"create, one hour": ["POST", "/v1/service-accounts/payments.ci-runner/keys", {"ttl_seconds": 3600}],
		"create, one day": ["POST", "/v1/service-accounts/payments.ci-runner/keys", {"ttl_seconds": 86400}],
		"rotate, one hour": ["POST", "/v1/service-accounts/payments.ci-runner/keys/k-1/rotate", {"ttl_seconds": 3600}],
	}
	d := call(ci_payments, c[0], c[1], c[2])
	allowed(d)
	d.headers == {"X-Policy-Team": "payments"}
	d.labels.team == "payments"
}

test_ci_key_ttl_must_be_bounded[name] if {
	some name, body in {
		"over a day": {"ttl_seconds": 86401},
		"missing": {},
		"zero": {"ttl_seconds": 0},
		"negative": {"ttl_seconds": -60},
		"fractional": {"ttl_seconds": 1.5},
		"string": {"ttl_seconds": "3600"},
	}
	every path in [
		"/v1/service-accounts/payments.ci-runner/keys",
		"/v1/service-accounts/payments.ci-runner/keys/k-1/rotate",
	] {
		denied(call(ci_payments, "POST", path, body), "ci keys need an integer ttl_seconds between 1 and 86400")
	}
}

test_ci_key_needs_body if {
	reason := "request body must be a complete JSON object"
	denied(call(ci_payments, "POST", "/v1/service-accounts/payments.ci-runner/keys", null), reason)
	denied(call(ci_payments, "POST", "/v1/service-accounts/payments.ci-runner/keys/k-1/rotate", null), reason)
}

test_ci_key_truncated_body_is_denied if {
	d := sampleapi.decision with input as {
		"request": {
			"method": "POST",
			"path": "/v1/service-accounts/payments.ci-runner/keys",
			"segments": ["v1", "service-accounts", "payments.ci-runner", "keys"],
			"query": {},
			"body": {"ttl_seconds": 3600},
			"body_truncated": true,
		},
		"identity": ci_payments,
	}
	denied(d, "request body must be a complete JSON object")
}

test_ci_reads_own_team[name] if {
	some name, c in {
		"account": ["/v1/service-accounts/payments.ci-runner", {}],
		"keys": ["/v1/service-accounts/payments.ci-runner/keys", {}],
		"list": ["/v1/service-accounts", {"team": ["payments"]}],
	}
	allowed(eval(ci_payments, "GET", c[0], c[1], null))
}

test_ci_cannot_touch_other_team[name] if {
	some name, c in {
		"read": ["GET", "/v1/service-accounts/billing.exporter", null],
		"create key": ["POST", "/v1/service-accounts/billing.exporter/keys", {"ttl_seconds": 3600}],
		"rotate key": ["POST", "/v1/service-accounts/billing.exporter/keys/k-1/rotate", {"ttl_seconds": 3600}],
	}
	denied(call(ci_payments, c[0], c[1], c[2]), "account belongs to team \"billing\", not the caller's")
}

test_ci_does_nothing_else[name] if {
	some name, c in {
		"account.create": ["POST", "/v1/service-accounts", new_account("payments.new", "payments")],
		"account.suspend": ["POST", "/v1/service-accounts/payments.ci-runner/suspend", null],
		"account.reactivate": ["POST", "/v1/service-accounts/payments.ci-runner/reactivate", null],
		"account.delete": ["DELETE", "/v1/service-accounts/payments.ci-runner", null],
		"key.revoke": ["DELETE", "/v1/service-accounts/payments.ci-runner/keys/k-1", null],
	}
	denied(call(ci_payments, c[0], c[1], c[2]), sprintf("ci may not perform %s", [name]))
}

test_ci_and_team_lead_roles_combine if {
	who := identity("release-bot", ["ci", "team-lead", "team:payments"])
	allowed(call(who, "POST", "/v1/service-accounts/payments.ci-runner/suspend", null))
	allowed(call(who, "POST", "/v1/service-accounts/payments.ci-runner/keys", {"ttl_seconds": 604800}))
}

# The decision document.

test_secret_in_body_is_masked if {
	d := call(platform_admin, "POST", "/v1/service-accounts/payments.deployer/keys", {"secret": "imported", "ttl_seconds": 60})
	d.mask == {"input.request.body.secret"}
	call(platform_admin, "POST", "/v1/service-accounts/payments.deployer/keys", {"ttl_seconds": 60}).mask == set()
}

test_secret_is_masked_on_denial if {
	d := call(ci_payments, "POST", "/v1/service-accounts/billing.exporter/keys", {"secret": "imported"})
	d.allow == false
	d.mask == {"input.request.body.secret"}
}

test_denial_shape if {
	d := call(identity("nobody", []), "GET", "/v1/service-accounts", null)
	d == {"allow": false, "reason": "no rule permits this request", "status": 403, "mask": set(), "labels": {"action": "account.list"}}
}
