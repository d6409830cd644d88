# Package lib.adminapi is the small library the shipped admin-API policies
# share: who the caller is, what kind of request this is, whether a regular
# expression a client wants to store is narrow, and how a decision document
# is built.
#
# It reads only the documented input contract (input.request, input.identity,
# input.route) and holds no data of its own.
#
# The decision pattern every shipped policy follows:
#
#   default allow := false
#   allow if { ... }                       # grants: narrow, one per permission
#   reasons contains "..." if { ... }      # explanations for the usual denials
#   decision := adminapi.decide(allow, reasons)
#
# Only grants allow. Reasons never veto a grant: they explain to the caller
# (and to the decision log) why a request that no grant matched was denied.
# Roles therefore compose as a union of permissions, and a request that
# matches nothing is denied.
package lib.adminapi

# authenticated is true when the gateway verified who the caller is.
authenticated if input.identity.authenticated == true

# in_group(g) is true when the verified caller carries group g. Groups of an
# unauthenticated identity never count, so a grant written with in_group
# implies authentication.
in_group(g) if {
	authenticated
	g in input.identity.groups
}

# teams is the set of teams the verified caller belongs to, taken from groups
# of the form "team:<name>".
teams contains team if {
	some g in input.identity.groups
	in_group(g)
	startswith(g, "team:")
	team := substring(g, count("team:"), -1)
	team != ""
}

# read_methods are the methods that read and never change state.
read_methods := {"GET", "HEAD", "OPTIONS"}

# is_read is true for requests that only read.
is_read if input.request.method in read_methods

# method is the effective request method, uppercase.
method := input.request.method

# segments is the canonical path split on "/" with every segment
# percent-decoded: "/api/permissions/%2F/ci-bot" is
# ["api", "permissions", "/", "ci-bot"]. Matching on segments rather than on
# the path string means an encoded "/" inside a name can never be mistaken for
# a path separator.
segments := input.request.segments

# path_matches(pattern) is true when the canonical path matches pattern, an
# array of segments in which "*" stands for exactly one segment and a final
# "**" for any number of further segments, none included:
#
#   path_matches(["api", "users", "*"])   /api/users/ci-new
#   path_matches(["api", "**"])           /api, /api/vhosts/%2F, ...
path_matches(pattern) if {
	count(pattern) == count(segments)
	every i, p in pattern {
		segment_matches(p, segments[i])
	}
}

path_matches(pattern) if {
	count(pattern) > 0
	pattern[count(pattern) - 1] == "**"
	prefix := array.slice(pattern, 0, count(pattern) - 1)
	count(segments) >= count(prefix)
	every i, p in prefix {
		segment_matches(p, segments[i])
	}
}

segment_matches("*", _) := true

segment_matches(p, s) if {
	p != "*"
	p == s
}

# body is the parsed JSON object of the request, undefined when the gateway
# could not parse all of it (not JSON, not an object, or over the size limit).
# Rules that inspect the body must not allow without it: a truncated body may
# hide exactly the field they check.
body := input.request.body if {
	is_object(input.request.body)
	not input.request.body_truncated
}

# narrow_pattern(p) is true when p, a regular expression that the backend
# will match against resource names (as RabbitMQ permissions are), can only
# match one fixed name or the names under one fixed dotted prefix:
#
#   ""                  matches nothing (RabbitMQ: no access)
#   "^name$"            exactly "name"
#   "^prefix\."         names starting with "prefix."
#   "^prefix\..*"       the same, written out
#
# A name is letters, digits, "_" and "-", optionally in parts joined by an
# escaped dot ("^payments\.orders$"). Everything else is refused: ".*", ".+",
# unanchored patterns (which match anywhere inside a name), alternations,
# classes, repetitions and unescaped dots.
narrow_pattern("") := true

narrow_pattern(p) if regex.match(`^\^[A-Za-z0-9_-]+(\\\.[A-Za-z0-9_-]+)*(\$|\\\.(\.\*)?)$`, p)

# deny(reason) is a denial with the default status.
deny(reason) := {"allow": false, "reason": reason, "status": 403}

# unauthenticated is the denial for a caller who presented no valid
# credential.
unauthenticated := {"allow": false, "reason": "unauthenticated", "status": 401}

# default_reason explains a denial that no policy reason covers.
default_reason := "no rule permits this request"

# decide(granted, reasons) is the decision document for a request that the
# policy's grants did (granted == true) or did not allow. A denied
# unauthenticated caller gets 401; a denied authenticated caller gets 403 with
# the policy's reasons, sorted and joined, or default_reason.
decide(granted, _) := {"allow": true} if granted

decide(granted, _) := unauthenticated if {
	not granted
	not authenticated
}

decide(granted, reasons) := deny(explain(reasons)) if {
	not granted
	authenticated
}

# explain(reasons) is the client-facing text for a set of reasons.
explain(reasons) := concat("; ", sort(reasons)) if count(reasons) > 0

explain(reasons) := default_reason if count(reasons) == 0
