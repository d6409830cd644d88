# Package rbac is the reference policy of policygate's benchmarks: role-based
# access for an NHI admin API, in the shape production policies take.
#
#   rule path:  data.rbac.decision
#   roles:      input.identity.claims.roles, e.g. ["role-7", "role-12"]
#               (a JWT claim)
#   grants:     data.rbac.roles["role-7"] = [{"method": "GET", "path": "/v1/accounts/*"}, ...]
#               path is a glob over "/"-separated segments
#   accounts:   data.rbac.service_accounts["sa-000042"] = {"team": "team-2", "suspended": false}
#               (optional; a suspended caller is denied whatever its roles)
#
# Every lookup goes by key (a role, a subject), never by scanning data, so
# the cost of a decision depends on the caller's roles and grants, not on how
# many roles or accounts exist.
package rbac

default decision := {"allow": false, "reason": "no_grant"}

decision := {"allow": true} if {
	not suspended
	granted
}

decision := {"allow": false, "reason": "suspended"} if suspended

suspended if data.rbac.service_accounts[input.identity.subject].suspended == true

granted if {
	some role in input.identity.claims.roles
	some grant in data.rbac.roles[role]
	grant.method == input.request.method
	glob.match(grant.path, ["/"], input.request.path)
}
