# Reference policy of the security regression suite (see ../cases.yaml):
# deny by default; GET/HEAD under /public open to everyone; /admin only for
# the admin group; /internal only from 10.0.0.1. The remaining rules exist
# to exercise the failure contract: undefined, evaluation error, timeout,
# malformed decision.
package faults

default decision := {"allow": false, "reason": "default_deny"}

decision := {"allow": true, "headers": {"X-Gateway-Subject": input.identity.subject}} if {
	admin_call
} else := {"allow": true} if {
	public_read
} else := {"allow": true} if {
	input.request.segments[0] == "internal"
	input.request.remote_addr == "10.0.0.1"
}

admin_call if {
	input.request.segments[0] == "admin"
	"admin" in input.identity.groups
}

public_read if {
	input.request.method in {"GET", "HEAD"}
	input.request.segments[0] == "public"
}

# Defined only for a method no client sends: undefined for every request.
undefined_decision := true if input.request.method == "NEVER"

# Division by zero is an evaluation error under strict builtin errors.
error_decision := x if x := 1 / (count(input.request.segments) - count(input.request.segments))

# Far more work than any evaluation timeout allows.
slow_decision if {
	some i in numbers.range(1, 1000000)
	some j in numbers.range(1, 1000000)
	i * j == -1
}

# allow must be a boolean; a string is a policy bug that must deny.
malformed_decision := {"allow": "yes"}

# A denial with its own status, reason and response header.
custom_deny := {"allow": false, "status": 429, "reason": "slow_down", "response_headers": {"Retry-After": "7"}}

# Allows everything and tells the upstream what the policy saw, so a test
# can compare it with what the upstream received.
echo := {"allow": true, "headers": {
	"X-Policy-Path": input.request.path,
	"X-Policy-Segments": json.marshal(input.request.segments),
	"X-Policy-Query": json.marshal(input.request.query),
	"X-Policy-Method": input.request.method,
}}

# Allows, with a per-caller limit chosen by the policy.
limited := {"allow": true, "rate_limit": [{"key": concat(":", ["caller", input.identity.subject]), "limit": 3, "period": "1m"}]}
