package rbac_test

import data.rbac

caller(roles) := {"subject": "sa-000001", "claims": {"roles": roles}}

test_get_allowed_by_role if {
	rbac.decision.allow with input as {
		"identity": caller(["role-0"]),
		"request": {"method": "GET", "path": "/v1/accounts/a1"},
	}
}

test_wrong_method_denied if {
	not rbac.decision.allow with input as {
		"identity": caller(["role-1"]),
		"request": {"method": "DELETE", "path": "/v1/keys/k1"},
	}
}

test_no_roles_denied if {
	d := rbac.decision with input as {
		"identity": caller([]),
		"request": {"method": "GET", "path": "/v1/accounts/a1"},
	}
	d == {"allow": false, "reason": "no_grant"}
}

test_unknown_role_denied if {
	not rbac.decision.allow with input as {
		"identity": caller(["role-unknown"]),
		"request": {"method": "GET", "path": "/v1/accounts/a1"},
	}
}

test_glob_matches_one_segment if {
	not rbac.decision.allow with input as {
		"identity": caller(["role-0"]),
		"request": {"method": "GET", "path": "/v1/accounts/a1/extra"},
	}
}

test_suspended_denied_whatever_the_roles if {
	d := rbac.decision with input as {
		"identity": {"subject": "sa-000007", "claims": {"roles": ["role-0"]}},
		"request": {"method": "GET", "path": "/v1/accounts/a1"},
	}
	d == {"allow": false, "reason": "suspended"}
}
