# A policy written for opa-envoy-plugin, unchanged: it reads only the
# plugin's input fields (attributes, parsed_path, parsed_query, parsed_body)
# and answers with the plugin's result shape.
package envoy.authz

default allow := false

allow if {
	input.attributes.request.http.method == "GET"
	input.parsed_path[0] == "public"
}

allow if {
	input.attributes.request.http.method == "POST"
	input.parsed_path == ["orders"]
	input.parsed_body.amount < 100
	input.parsed_query.dry_run == ["true"]
}

result := {
	"allowed": allow,
	"headers": {"x-opa-envoy": "checked"},
	"response_headers_to_add": {"x-policy": "envoy.authz"},
	"http_status": 418,
}
