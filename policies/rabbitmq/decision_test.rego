package rabbitmq_test

import data.rabbitmq

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
	"method": "jwt",
	"subject": subject,
	"issuer": "https://idp.example.com",
	"spiffe_id": "",
	"key_id": "",
	"groups": groups,
	"claims": {},
}

security_admin := identity("alice@example.com", ["security-admin"])

auditor := identity("audit-bot", ["auditors"])

ci_payments := identity("ci-payments", ["ci", "team:payments"])

# eval(who, method, path, body) is the decision for one call. Segments are
# derived the way the gateway derives them: split on "/", empty segments
# dropped, each percent-decoded.
eval(who, method, path, body) := d if {
	d := rabbitmq.decision with input as call_input(who, method, path, body)
}

call_input(who, method, path, body) := {
	"request": {
		"id": "test",
		"method": method,
		"scheme": "https",
		"host": "rabbitmq.example.com",
		"path": path,
		"raw_path": path,
		"segments": [urlquery.decode(s) | some s in split(path, "/"); s != ""],
		"query": {},
		"headers": {"content-type": "application/json"},
		"body": body,
		"body_truncated": false,
		"remote_addr": "127.0.0.1:50000",
	},
	"identity": who,
	"route": {"name": "rabbitmq", "labels": {"api": "rabbitmq"}},
}

allowed(d) if d.allow == true

denied(d, reason) if {
	d.allow == false
	d.reason == reason
	d.status == 403
}

# A permission body with narrow patterns.
narrow := {"configure": "^payments\\.orders$", "write": "^payments\\.", "read": ""}

# Unauthenticated callers.

test_unauthenticated_gets_401 if {
	d := eval(anonymous, "GET", "/api/overview", null)
	d.allow == false
	d.reason == "unauthenticated"
	d.status == 401
}

test_unverified_groups_do_not_count if {
	# Groups on an identity that authentication did not verify grant nothing.
	who := object.union(anonymous, {"groups": ["security-admin"]})
	d := eval(who, "DELETE", "/api/users/payments-ci-new", null)
	d.status == 401
}

# security-admin.

test_security_admin_deletes_users if {
	allowed(eval(security_admin, "DELETE", "/api/users/payments-ci-new", null))
}

test_security_admin_grants_administrator_tag if {
	allowed(eval(security_admin, "PUT", "/api/users/ops", {"password": "s3cret", "tags": "administrator"}))
	allowed(eval(security_admin, "PUT", "/api/users/ops", {"password": "s3cret", "tags": ["administrator", "management"]}))
}

test_security_admin_grants_wildcards_anywhere if {
	allowed(eval(security_admin, "PUT", "/api/permissions/%2F/ops", {"configure": ".*", "write": ".*", "read": ".*"}))
}

# auditors.

test_auditors_read_everything_under_api if {
	allowed(eval(auditor, "GET", "/api/queues/%2F/orders", null))
	allowed(eval(auditor, "HEAD", "/api/users", null))
	allowed(eval(auditor, "GET", "/api", null))
}

test_auditors_cannot_write[method] if {
	some method in ["PUT", "POST", "DELETE", "PATCH"]
	denied(eval(auditor, method, "/api/users/payments-ci-new", {"password": "x", "tags": ""}), "auditors are read-only")
}

test_auditors_read_only_api if {
	denied(eval(auditor, "GET", "/metrics", null), "no rule permits this request")
}

# ci: reads.

ci_readable_paths := [
	"/api/overview",
	"/api/whoami",
	"/api/vhosts",
	"/api/users",
	"/api/users/payments-ci-new",
	"/api/permissions",
	"/api/permissions/payments/payments-ci-new",
	"/api/permissions/%2F/payments-ci-bot",
]

test_ci_reads[path] if {
	some path in ci_readable_paths
	allowed(eval(ci_payments, "GET", path, null))
}

test_ci_cannot_read_other_resources[path] if {
	some path in [
		"/api/queues",
		"/api/definitions",
		"/api/vhosts/payments",
		"/api/users/payments-ci-new/permissions",
		"/api/users/payments-ci-new/extra/segment",
	]
	denied(eval(ci_payments, "GET", path, null), "no rule permits this request")
}

test_ci_reads_are_get_only if {
	denied(eval(ci_payments, "HEAD", "/api/overview", null), "no rule permits this request")
}

test_ci_without_team_is_denied if {
	who := identity("ci-orphan", ["ci"])
	denied(eval(who, "GET", "/api/overview", null), "ci identity has no team:<name> group")
}

# ci: users.

untagged_bodies := {
	"tags absent": {"password": "s3cret"},
	"tags empty string": {"password": "s3cret", "tags": ""},
	"tags empty array": {"password": "s3cret", "tags": []},
	"password_hash, no tags": {"password_hash": "kI3GCqW5JLMJa4iX1lo7X4D6XbYqlLgxIs30+P6tENUV2POR", "tags": ""},
}

test_ci_creates_untagged_users[name] if {
	some name, body in untagged_bodies
	allowed(eval(ci_payments, "PUT", "/api/users/payments-ci-new", body))
}

tagged_bodies := {
	"administrator as string": {"password": "s3cret", "tags": "administrator"},
	"list as string": {"password": "s3cret", "tags": "management,policymaker"},
	"blank list as string": {"password": "s3cret", "tags": " , "},
	"administrator as array": {"password": "s3cret", "tags": ["administrator"]},
	"empty name in array": {"password": "s3cret", "tags": [""]},
	"null": {"password": "s3cret", "tags": null},
	"password_hash with tags": {"password_hash": "kI3GCqW5JLMJa4iX1lo7X4D6XbYqlLgxIs30+P6tENUV2POR", "tags": "monitoring"},
}

test_ci_cannot_set_tags[name] if {
	some name, body in tagged_bodies
	denied(eval(ci_payments, "PUT", "/api/users/payments-ci-new", body), "ci may not set user tags")
}

test_ci_user_body_must_be_parsed if {
	denied(eval(ci_payments, "PUT", "/api/users/payments-ci-new", null), "request body must be a complete JSON object")
}

test_ci_truncated_body_is_denied if {
	d := rabbitmq.decision with input as {
		"request": {
			"method": "PUT",
			"path": "/api/users/payments-ci-new",
			"segments": ["api", "users", "payments-ci-new"],
			"body": {"password": "s3cret"},
			"body_truncated": true,
		},
		"identity": ci_payments,
	}
	denied(d, "request body must be a complete JSON object")
}

test_ci_cannot_delete_users if {
	denied(eval(ci_payments, "DELETE", "/api/users/payments-ci-new", null), "ci may not delete users")
}

test_password_is_masked if {
	d := eval(ci_payments, "PUT", "/api/users/payments-ci-new", {"password": "s3cret", "tags": "administrator"})
	d.mask == {"input.request.body.password"}
	d2 := eval(ci_payments, "PUT", "/api/users/payments-ci-new", {"password_hash": "abc"})
	d2.mask == {"input.request.body.password_hash"}
	eval(ci_payments, "GET", "/api/users", null).mask == set()
}

# ci: permissions.

narrow_bodies := {
	"exact names": {"configure": "^payments-orders$", "write": "^payments-orders$", "read": "^payments-orders$"},
	"dotted prefix": narrow,
	"dotted prefix written out": {"configure": "^payments\\..*", "write": "^payments\\.", "read": "^payments\\.audit\\..*"},
	"no access": {"configure": "", "write": "", "read": ""},
}

test_ci_grants_narrow_permissions_on_team_vhost[name] if {
	some name, body in narrow_bodies
	allowed(eval(ci_payments, "PUT", "/api/permissions/payments/payments-ci-new", body))
}

broad_patterns := {
	"dot star": ".*",
	"dot plus": ".+",
	"anchored dot star": "^.*$",
	"unanchored literal": "payments",
	"unanchored suffix": "payments$",
	"prefix without dot": "^payments",
	"alternation": "^payments$|^billing$",
	"class": "^[a-z]+$",
	"unescaped dot": "^payments.orders$",
	"optional": "^payments?$",
	"repetition": "^pay{1,3}ments$",
	"not a string": 42,
}

test_ci_cannot_grant_broad_patterns[name] if {
	some name, pattern in broad_patterns
	every field in ["configure", "write", "read"] {
		body := object.union(narrow, {field: pattern})
		d := eval(ci_payments, "PUT", "/api/permissions/payments/payments-ci-new", body)
		denied(d, sprintf("%s pattern is too broad: use \"\", ^name$ or ^prefix\\.", [field]))
	}
}

test_ci_permissions_need_all_three_patterns if {
	body := json.remove(narrow, ["read"])
	denied(eval(ci_payments, "PUT", "/api/permissions/payments/payments-ci-new", body), "read pattern is too broad: use \"\", ^name$ or ^prefix\\.")
}

test_ci_cannot_grant_on_other_team_vhost if {
	d := eval(ci_payments, "PUT", "/api/permissions/billing/payments-ci-new", narrow)
	denied(d, "vhost \"billing\" does not belong to the caller's team")
}

test_ci_cannot_grant_on_default_vhost if {
	# "/" is encoded as %2F in the path and decoded in segments.
	d := eval(ci_payments, "PUT", "/api/permissions/%2F/payments-ci-new", narrow)
	denied(d, "vhost \"/\" does not belong to the caller's team")
}

test_ci_grants_on_default_vhost_when_team_owns_it if {
	d := eval(ci_payments, "PUT", "/api/permissions/%2F/payments-ci-new", narrow) with data.rabbitmq.teams as {"payments": {"vhosts": ["/"]}}
	allowed(d)
}

test_ci_reasons_accumulate if {
	d := eval(ci_payments, "PUT", "/api/permissions/billing/payments-ci-new", {"configure": ".*", "write": "", "read": ""})
	denied(d, "configure pattern is too broad: use \"\", ^name$ or ^prefix\\.; vhost \"billing\" does not belong to the caller's team")
}

test_ci_with_two_teams_uses_either if {
	who := identity("ci-shared", ["ci", "team:payments", "team:billing"])
	allowed(eval(who, "PUT", "/api/permissions/billing-staging/payments-ci-new", narrow))
	allowed(eval(who, "PUT", "/api/permissions/payments/payments-ci-new", narrow))
}

test_ci_team_missing_from_data_owns_nothing if {
	who := identity("ci-search", ["ci", "team:search"])
	denied(eval(who, "PUT", "/api/permissions/search/search-ci-new", narrow), "vhost \"search\" does not belong to the caller's team")
}

test_ci_permission_body_must_be_parsed if {
	denied(eval(ci_payments, "PUT", "/api/permissions/payments/payments-ci-new", null), "request body must be a complete JSON object")
}

test_ci_cannot_do_anything_else[name] if {
	some name, call in {
		"revoke permissions": ["DELETE", "/api/permissions/payments/payments-ci-new", null],
		"create vhost": ["PUT", "/api/vhosts/payments", {}],
		"topic permissions": ["PUT", "/api/topic-permissions/payments/payments-ci-new", {"exchange": "amq.topic", "write": ".*", "read": ".*"}],
		"import definitions": ["POST", "/api/definitions", {}],
		"close connection": ["DELETE", "/api/connections/abc", null],
	}
	denied(eval(ci_payments, call[0], call[1], call[2]), "no rule permits this request")
}

# The decision document.

test_denial_always_has_reason_and_status if {
	d := eval(identity("nobody", []), "GET", "/api/overview", null)
	d == {"allow": false, "reason": "no rule permits this request", "status": 403, "mask": set()}
}

test_allow_has_no_reason if {
	d := eval(security_admin, "GET", "/api/overview", null)
	d == {"allow": true, "mask": set()}
}

# ci names users only inside its team's namespace: PUT /api/users/<name> also
# overwrites existing users, so anything else would let ci reset an
# administrator's password and clear its tags.
test_ci_user_names_outside_team_namespace_denied[name] if {
	some name in ["admin", "guest", "billing-ci-new", "payments-", "paymentsx-ci", "ci-new"]
	d := eval(ci_payments, "PUT", concat("/", ["/api/users", name]), {"password": "x", "tags": ""})
	denied(d, sprintf("user %q is outside the caller's team namespace", [name]))
}

test_ci_grants_only_to_team_users if {
	narrow := {"configure": "^payments-ci-new$", "write": "", "read": ""}
	d := eval(ci_payments, "PUT", "/api/permissions/payments/admin", narrow)
	denied(d, "user \"admin\" is outside the caller's team namespace")
}

test_ci_user_prefixes_from_data if {
	body := {"password": "x", "tags": ""}
	teams := {"payments": {"vhosts": ["payments"], "user_prefixes": ["svc-pay-"]}}
	allowed(eval(ci_payments, "PUT", "/api/users/svc-pay-etl", body)) with data.rabbitmq.teams as teams
	d := eval(ci_payments, "PUT", "/api/users/payments-etl", body) with data.rabbitmq.teams as teams
	denied(d, "user \"payments-etl\" is outside the caller's team namespace")
}
