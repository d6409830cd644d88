# Package rabbitmq governs RabbitMQ's management HTTP API as an administrative
# API for non-human identities: creating users, setting their tags and
# granting them permissions on virtual hosts.
#
# The gateway forwards the real API paths (/api/users/<name>,
# /api/permissions/<vhost>/<user>, ...). The default vhost "/" travels as %2F
# and the policy sees it decoded in input.request.segments, so
# PUT /api/permissions/%2F/ci-bot has segments
# ["api", "permissions", "/", "ci-bot"].
#
# Who may do what (groups are the verified input.identity.groups):
#
#   security-admin  everything, including deleting users and setting any tag
#                   (administrator included).
#   auditors        GET and HEAD under /api, nothing else.
#   ci              needs a "team:<name>" group as well. May GET /api/overview,
#                   /api/whoami, /api/vhosts, /api/users, /api/users/<name> and
#                   anything under /api/permissions; may create users
#                   (PUT /api/users/<name>) without tags; may grant
#                   permissions (PUT /api/permissions/<vhost>/<user>) on its
#                   team's vhosts with narrow patterns only. Nothing else: no
#                   deletes, no tags, no other team's vhosts.
#
# Unauthenticated callers get 401. Everything no grant covers is denied.
#
# The route must have JSON body parsing enabled: without a complete parsed
# body the policy cannot see tags or permission patterns, and denies ci.
#
# PUT /api/users/<name> also updates an existing user: a rule that let ci
# PUT any name would let it reset the password (and clear the tags) of an
# administrator. So ci may only name users in its team's namespace: names
# starting with one of the team's user_prefixes (default "<team>-"), both
# when declaring users and when granting them permissions.
#
# Data: data.rabbitmq.teams maps a team to the vhosts its CI may grant on,
# e.g. {"payments": {"vhosts": ["payments"]}} (see data.json next to this
# file). A team missing from the map owns no vhost.
package rabbitmq

import data.lib.adminapi

# decision is the document the gateway enforces. Passwords in user bodies are
# masked in the decision log whatever the outcome.
decision := object.union(adminapi.decide(allow, reasons), {"mask": mask})

default allow := false

# security-admin may do everything.
allow if adminapi.in_group("security-admin")

# auditors may read the whole API.
allow if {
	adminapi.in_group("auditors")
	adminapi.method in {"GET", "HEAD"}
	adminapi.path_matches(["api", "**"])
}

# ci may read what it needs to provision users and permissions.
allow if {
	ci
	adminapi.method == "GET"
	some pattern in ci_readable
	adminapi.path_matches(pattern)
}

# ci may create users, but only without tags: tags are what turn a user into
# a management or administrator account.
allow if {
	ci
	adminapi.method == "PUT"
	adminapi.path_matches(["api", "users", "*"])
	team_user(adminapi.segments[2])
	untagged(adminapi.body)
}

# ci may grant permissions on its team's vhosts, with narrow patterns only.
allow if {
	ci
	adminapi.method == "PUT"
	adminapi.path_matches(["api", "permissions", "*", "*"])
	team_vhost(adminapi.segments[2])
	team_user(adminapi.segments[3])
	narrow_permissions(adminapi.body)
}

# ci is true for a verified CI identity that belongs to at least one team.
ci if {
	adminapi.in_group("ci")
	count(adminapi.teams) > 0
}

# ci_readable are the paths ci may GET.
ci_readable := [
	["api", "overview"],
	["api", "whoami"],
	["api", "vhosts"],
	["api", "users"],
	["api", "users", "*"],
	["api", "permissions", "**"],
]

# untagged(user) is true when a user body sets no tags. rabbitmqadmin and the
# management UI send tags as one comma-separated string, newer clients as an
# array; absent, "" and [] all mean "no tags". Any other value, including
# null or [""], counts as setting tags.
untagged(user) if not "tags" in object.keys(user)

untagged(user) if user.tags in {"", []}

# team_vhost(vhost) is true when vhost belongs to one of the caller's teams.
team_vhost(vhost) if {
	some team in adminapi.teams
	vhost in data.rabbitmq.teams[team].vhosts
}

# team_user(name) is true when name lies in the namespace of one of the
# caller's teams: it starts with one of the team's user_prefixes, or with
# "<team>-" when the team lists none, and has more after the prefix.
team_user(name) if {
	some team in adminapi.teams
	some prefix in user_prefixes(team)
	startswith(name, prefix)
	count(name) > count(prefix)
}

user_prefixes(team) := data.rabbitmq.teams[team].user_prefixes

user_prefixes(team) := [concat("", [team, "-"])] if not data.rabbitmq.teams[team].user_prefixes

# permission_fields are the three patterns of a RabbitMQ permission.
permission_fields := ["configure", "write", "read"]

# narrow_permissions(perm) is true when all three patterns are present and
# narrow (see adminapi.narrow_pattern).
narrow_permissions(perm) if {
	every field in permission_fields {
		narrow_field(perm, field)
	}
}

narrow_field(perm, field) if {
	is_string(perm[field])
	adminapi.narrow_pattern(perm[field])
}

# Reasons explain the denials ci and auditors run into most.

reasons contains "ci identity has no team:<name> group" if {
	adminapi.in_group("ci")
	count(adminapi.teams) == 0
}

reasons contains "auditors are read-only" if {
	adminapi.in_group("auditors")
	not adminapi.is_read
}

reasons contains "ci may not delete users" if {
	ci
	adminapi.method == "DELETE"
	adminapi.path_matches(["api", "users", "*"])
}

reasons contains "request body must be a complete JSON object" if {
	ci
	adminapi.method == "PUT"
	some pattern in [["api", "users", "*"], ["api", "permissions", "*", "*"]]
	adminapi.path_matches(pattern)
	not adminapi.body
}

reasons contains sprintf("user %q is outside the caller's team namespace", [name]) if {
	ci
	adminapi.method == "PUT"
	some pattern in [["api", "users", "*"], ["api", "permissions", "*", "*"]]
	adminapi.path_matches(pattern)
	name := adminapi.segments[count(pattern) - 1]
	not team_user(name)
}

reasons contains "ci may not set user tags" if {
	ci
	adminapi.method == "PUT"
	adminapi.path_matches(["api", "users", "*"])
	user := adminapi.body
	not untagged(user)
}

reasons contains sprintf("vhost %q does not belong to the caller's team", [vhost]) if {
	ci
	adminapi.method == "PUT"
	adminapi.path_matches(["api", "permissions", "*", "*"])
	vhost := adminapi.segments[2]
	not team_vhost(vhost)
}

reasons contains sprintf("%s pattern is too broad: use \"\", ^name$ or ^prefix\\.", [field]) if {
	ci
	adminapi.method == "PUT"
	adminapi.path_matches(["api", "permissions", "*", "*"])
	perm := adminapi.body
	some field in permission_fields
	not narrow_field(perm, field)
}

# mask hides user passwords from the decision log.
mask contains sprintf("input.request.body.%s", [field]) if {
	is_object(input.request.body)
	some field in ["password", "password_hash"]
	field in object.keys(input.request.body)
}
