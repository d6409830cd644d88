package lib.adminapi_test

import data.lib.adminapi

who(authenticated, groups) := {"authenticated": authenticated, "groups": groups}

test_in_group_needs_authentication if {
	adminapi.in_group("ops") with input.identity as who(true, ["ops"])
	not adminapi.in_group("ops") with input.identity as who(false, ["ops"])
	not adminapi.in_group("ops") with input.identity as who(true, ["dev"])
}

test_teams if {
	adminapi.teams == {"payments", "billing"} with input.identity as who(true, ["ci", "team:payments", "team:billing", "team:"])
	adminapi.teams == set() with input.identity as who(false, ["team:payments"])
}

test_is_read[method] if {
	some method in ["GET", "HEAD", "OPTIONS"]
	adminapi.is_read with input.request.method as method
}

test_is_not_read[method] if {
	some method in ["POST", "PUT", "PATCH", "DELETE"]
	not adminapi.is_read with input.request.method as method
}

test_path_matches[name] if {
	some name, c in {
		"exact": [["api", "users"], ["api", "users"]],
		"one segment": [["api", "users", "*"], ["api", "users", "ci-new"]],
		"decoded slash is one segment": [["api", "permissions", "*", "*"], ["api", "permissions", "/", "ci-bot"]],
		"rest, none": [["api", "**"], ["api"]],
		"rest, several": [["api", "**"], ["api", "queues", "/", "orders"]],
	}
	adminapi.path_matches(c[0]) with input.request.segments as c[1]
}

test_path_does_not_match[name] if {
	some name, c in {
		"shorter": [["api", "users", "*"], ["api", "users"]],
		"longer": [["api", "users", "*"], ["api", "users", "ci-new", "permissions"]],
		"other literal": [["api", "users"], ["api", "vhosts"]],
		"rest needs prefix": [["api", "**"], ["metrics"]],
		"empty path": [["*"], []],
	}
	not adminapi.path_matches(c[0]) with input.request.segments as c[1]
}

test_body if {
	adminapi.body == {"a": 1} with input.request as {"body": {"a": 1}, "body_truncated": false}
	not adminapi.body with input.request as {"body": {"a": 1}, "body_truncated": true}
	not adminapi.body with input.request as {"body": null, "body_truncated": false}
	not adminapi.body with input.request as {"body": [1], "body_truncated": false}
}

test_narrow_pattern[p] if {
	some p in ["", "^orders$", "^payments\\.", "^payments\\..*", "^payments\\.orders$", "^ci_bot-2$"]
	adminapi.narrow_pattern(p)
}

test_broad_pattern[p] if {
	some p in [
		".*", ".+", "^.*$", "orders", "^orders", "orders$", "^a$|^b$",
		"^[a-z]$", "^a.b$", "^ab?$", "^a{2}$", "^a\\.$", "^\\.", "^$",
	]
	not adminapi.narrow_pattern(p)
}

test_decide if {
	adminapi.decide(true, {"ignored"}) == {"allow": true}
	adminapi.decide(false, set()) == adminapi.unauthenticated with input.identity as who(false, [])
	adminapi.decide(false, set()) == {"allow": false, "reason": "no rule permits this request", "status": 403} with input.identity as who(true, [])
	adminapi.decide(false, {"b", "a"}) == {"allow": false, "reason": "a; b", "status": 403} with input.identity as who(true, [])
}
