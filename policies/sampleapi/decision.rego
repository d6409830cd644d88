# Package sampleapi governs the sample NHI admin API (testdata/sampleapi): the
# lifecycle of service accounts, their keys and their role bindings.
#
# Account ids follow the convention <team>.<name> (e.g. "payments.deployer"):
# team is [a-z0-9][a-z0-9-]*, name is [a-z0-9][a-z0-9_-]*, each at most 63
# characters, so the team is the part before the only dot. The gateway never
# asks the backend who owns an account, so the id is the single source of an
# account's team, and the API refuses to create an account whose id and team
# disagree.
#
# Who may do what (groups are the verified input.identity.groups; a team
# comes from a "team:<name>" group):
#
#   everyone        GET /healthz.
#   platform-admin  everything.
#   auditor         GET anything under /v1.
#   team-lead       for accounts of their own team: create (the body's team
#                   and id prefix must both be the caller's team), suspend,
#                   delete, create/rotate/revoke keys, and read (the account,
#                   its keys, the list filtered by ?team=<team>). Reactivating
#                   is left to platform-admin: an account suspended by the
#                   security team must not be revived by the team it belongs
#                   to.
#   ci              for accounts of their own team: create and rotate keys
#                   with an explicit ttl_seconds of at most 86400, so every
#                   key CI mints expires within a day; read as team-lead does.
#
# Unauthenticated callers get 401. Bindings, events and everything else not
# listed are platform-admin's (and the auditor's to read).
#
# The route must have JSON body parsing enabled: without a complete parsed
# body the policy cannot see a new account's team or a key's ttl_seconds, and
# denies those calls to team roles.
#
# Allowed requests carry X-Policy-Team upstream: the team of the account the
# call acts on, or "" when it acts on none. The gateway sets it, so a value a
# client sent never reaches the API. Every decision labels the log with the
# action and team, and masks a secret sent in the request body.
package sampleapi

import data.lib.adminapi

decision := object.union_n([
	adminapi.decide(allow, reasons),
	{"mask": mask, "labels": log_labels},
	upstream,
])

default allow := false

# Anyone may check health.
allow if {
	adminapi.method == "GET"
	adminapi.path_matches(["healthz"])
}

# platform-admin may do everything.
allow if adminapi.in_group("platform-admin")

# auditor may read everything under /v1.
allow if {
	adminapi.in_group("auditor")
	adminapi.method == "GET"
	adminapi.path_matches(["v1", "**"])
}

# team-lead manages its own team's accounts and keys.
allow if {
	adminapi.in_group("team-lead")
	action in team_lead_actions
	target_team in adminapi.teams
}

# ci mints short-lived keys for, and reads, its own team's accounts.
allow if {
	adminapi.in_group("ci")
	action in ci_actions
	target_team in adminapi.teams
	ci_ttl_ok
}

team_lead_actions := {
	"account.create",
	"account.suspend",
	"account.delete",
	"key.create",
	"key.rotate",
	"key.revoke",
} | read_actions

ci_actions := {"key.create", "key.rotate"} | read_actions

read_actions := {"account.list", "account.read", "key.list"}

# key_actions mint a new secret.
key_actions := {"key.create", "key.rotate"}

# max_ci_ttl is the longest lifetime, in seconds, of a key CI mints.
max_ci_ttl := 86400

# action names the team-scoped operation a request performs, when it is one.
action := "account.create" if route("POST", ["v1", "service-accounts"])

action := "account.list" if route("GET", ["v1", "service-accounts"])

action := "account.read" if route("GET", ["v1", "service-accounts", "*"])

action := "account.suspend" if route("POST", ["v1", "service-accounts", "*", "suspend"])

action := "account.reactivate" if route("POST", ["v1", "service-accounts", "*", "reactivate"])

action := "account.delete" if route("DELETE", ["v1", "service-accounts", "*"])

action := "key.create" if route("POST", ["v1", "service-accounts", "*", "keys"])

action := "key.list" if route("GET", ["v1", "service-accounts", "*", "keys"])

action := "key.rotate" if route("POST", ["v1", "service-accounts", "*", "keys", "*", "rotate"])

action := "key.revoke" if route("DELETE", ["v1", "service-accounts", "*", "keys", "*"])

route(method, pattern) if {
	adminapi.method == method
	adminapi.path_matches(pattern)
}

# target_team is the team of the account the request acts on: the id prefix
# for /v1/service-accounts/<id>/..., the body's team on creation (only when
# the id carries the same team), the ?team= filter on listing.
target_team := account_team(adminapi.segments[2]) if {
	adminapi.path_matches(["v1", "service-accounts", "*", "**"])
}

target_team := adminapi.body.team if {
	action == "account.create"
	consistent_account(adminapi.body)
}

target_team := team if {
	action == "account.list"
	[team] := input.request.query.team
}

# account_team(id) is the team of a well-formed account id, undefined for an
# id that does not follow <team>.<name>. The same pattern is enforced by the
# API.
account_team(id) := split(id, ".")[0] if {
	is_string(id)
	regex.match(`^[a-z0-9][a-z0-9-]{0,62}\.[a-z0-9][a-z0-9_-]{0,62}$`, id)
}

# consistent_account(account) is true when a new account's id carries the
# account's team.
consistent_account(account) if account_team(account.id) == account.team

# ci_ttl_ok holds unless a CI request mints a key without an explicit,
# whole-second lifetime of at most max_ci_ttl.
ci_ttl_ok if not action in key_actions

ci_ttl_ok if {
	action in key_actions
	valid_ttl(adminapi.body.ttl_seconds)
}

valid_ttl(ttl) if {
	is_number(ttl)
	ttl == floor(ttl)
	ttl > 0
	ttl <= max_ci_ttl
}

# team_roles are the team-scoped roles the caller holds.
team_roles contains role if {
	some role, _ in role_actions
	adminapi.in_group(role)
}

role_actions := {"team-lead": team_lead_actions, "ci": ci_actions}

# Reasons explain the denials team roles and auditors run into most. They
# only explain: a caller holding several roles is allowed when any one of
# them allows.

reasons contains "auditors are read-only" if {
	adminapi.in_group("auditor")
	not adminapi.is_read
}

reasons contains sprintf("%s identity has no team:<name> group", [role]) if {
	some role in team_roles
	count(adminapi.teams) == 0
}

reasons contains sprintf("%s may not perform %s", [role, action]) if {
	some role in team_roles
	not action in role_actions[role]
}

reasons contains "account id must be <team>.<name>" if {
	count(team_roles) > 0
	adminapi.path_matches(["v1", "service-accounts", "*", "**"])
	not account_team(adminapi.segments[2])
}

reasons contains "account id must be <team>.<name> with the body's team" if {
	count(team_roles) > 0
	action == "account.create"
	account := adminapi.body
	not consistent_account(account)
}

reasons contains "request body must be a complete JSON object" if {
	count(team_roles) > 0
	action in ({"account.create"} | key_actions)
	not adminapi.body
}

reasons contains "list requests must be filtered by ?team=<your team>" if {
	count(team_roles) > 0
	action == "account.list"
	not target_team
}

reasons contains sprintf("account belongs to team %q, not the caller's", [team]) if {
	count(team_roles) > 0
	count(adminapi.teams) > 0
	action
	team := target_team
	not team in adminapi.teams
}

reasons contains sprintf("ci keys need an integer ttl_seconds between 1 and %d", [max_ci_ttl]) if {
	"ci" in team_roles
	action in key_actions
	adminapi.body
	not ci_ttl_ok
}

# upstream adds X-Policy-Team to allowed requests. The header is set even
# when the call acts on no team, so that a client cannot supply its own.
default upstream := {}

upstream := {"headers": {"X-Policy-Team": policy_team}} if allow

default policy_team := ""

policy_team := target_team

# log_labels name the action and team in the decision log.
log_labels["action"] := action

log_labels["team"] := target_team

# mask hides a secret sent in the request body from the decision log.
mask contains "input.request.body.secret" if {
	is_object(input.request.body)
	"secret" in object.keys(input.request.body)
}
